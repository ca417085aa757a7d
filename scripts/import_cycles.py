"""Import cycles of a Rust crate, between files and between top-level modules.

An edge runs from file A to file B when A names (in a `use` or a `crate::`/`super::` path
outside tests and comments) an item defined in B; the item is found by name among the files of
the module the path names. Re-exports in a `mod.rs` (paths relative to it) are not edges. A
module edge runs between the top-level modules of two files with an edge. Prints every cycle
and exits 1 if there is one. Usage: python3 scripts/import_cycles.py src"""
import os, re, sys
src = sys.argv[1]
files = {}
for root, _, names in os.walk(src):
    for n in names:
        if n.endswith('.rs') and not (n == 'tests.rs' or n.endswith('_tests.rs') or n == 'test_util.rs'):
            p = os.path.join(root, n)
            t = open(p).read().split('#[cfg(test)]')[0]
            t = re.sub(r'//[^\n]*', '', t)
            files[os.path.relpath(p, src)] = t
def modpath(rel):
    parts = rel[:-3].split(os.sep)
    if parts[-1] in ('mod', 'lib', 'main'): parts = parts[:-1]
    return parts
mod_of = {tuple(modpath(r)): r for r in files}
defs = {}  # name -> list of files
for rel, t in files.items():
    for m in re.finditer(r'\b(?:pub(?:\([^)]*\))?\s+)?(?:struct|enum|fn|trait|type|const|static|macro_rules!)\s+([A-Za-z_]\w*)', t):
        defs.setdefault(m.group(1), set()).add(rel)
def files_under(parts):
    pre = os.sep.join(parts)
    return [r for r in files if r == pre + '.rs' or r.startswith(pre + os.sep) or (not parts)]
edges = {r: set() for r in files}
for rel, t in files.items():
    me = modpath(rel)
    paths = []
    for m in re.finditer(r'\buse\s+([^;]+);', t):
        body = m.group(1).replace('\n', ' ')
        # expand braces one level
        def expand(s):
            mm = re.match(r'^(.*?)::\{(.*)\}$', s.strip())
            if not mm: return [s.strip()]
            pre, inner = mm.group(1), mm.group(2)
            out, depth, cur = [], 0, ''
            for ch in inner:
                if ch == '{': depth += 1
                if ch == '}': depth -= 1
                if ch == ',' and depth == 0: out.append(cur); cur = ''
                else: cur += ch
            if cur.strip(): out.append(cur)
            res = []
            for o in out:
                for e in expand(o.strip()): res.append(pre + '::' + e)
            return res
        paths += expand(body)
    paths += re.findall(r'\b((?:crate|super)(?:::\w+)+)', t)
    for p in paths:
        p = p.split(' as ')[0].strip()
        segs = p.split('::')
        if segs[0] == 'crate': base = []; segs = segs[1:]
        elif segs[0] == 'super':
            base = me[:-1] if not rel.endswith(('mod.rs',)) else me[:-1]
            segs = segs[1:]
            while segs and segs[0] == 'super': base = base[:-1]; segs = segs[1:]
        elif segs[0] == 'self': base = me; segs = segs[1:]
        else: continue
        # walk module segments
        mod = list(base)
        i = 0
        while i < len(segs) and tuple(mod + [segs[i]]) in mod_of: mod.append(segs[i]); i += 1
        item = segs[i] if i < len(segs) else None
        if item is None or item in ('self', '*'):
            target = {mod_of.get(tuple(mod))} - {None}
        else:
            cands = defs.get(item, set()) & set(files_under(mod))
            target = cands
        for tgt in target:
            if tgt != rel: edges[rel].add(tgt)
def strongly_connected(nodes, edges):
    """Tarjan's strongly connected components of more than one node."""
    index, low, stack, on, out, i = {}, {}, [], set(), [], [0]
    def visit(v):
        index[v] = low[v] = i[0]; i[0] += 1; stack.append(v); on.add(v)
        for w in edges.get(v, ()):
            if w not in index: visit(w); low[v] = min(low[v], low[w])
            elif w in on: low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            c = []
            while True:
                w = stack.pop(); on.discard(w); c.append(w)
                if w == v: break
            if len(c) > 1: out.append(sorted(c))
    for v in sorted(nodes):
        if v not in index: visit(v)
    return out
sys.setrecursionlimit(100000)
sccs = strongly_connected(files, edges)
for c in sccs:
    print('file cycle:', ' <-> '.join(c))
    for a in c: print('   ', a, '->', ', '.join(sorted(b for b in edges[a] if b in c)))
def top(rel):
    return rel.split(os.sep)[0].removesuffix('.rs')
medges = {}
for a, bs in edges.items():
    for b in bs:
        if top(a) != top(b) and top(a) != 'lib' and top(b) != 'lib':
            medges.setdefault(top(a), set()).add(top(b))
mods = sorted({top(r) for r in files} - {'lib'})
msccs = strongly_connected(mods, medges)
for c in msccs:
    print('module cycle:', ' <-> '.join(c))
print(f'{len(files)} files, {sum(len(v) for v in edges.values())} file edges, {len(sccs)} file cycles; '
      f'{len(mods)} modules, {sum(len(v) for v in medges.values())} module edges, {len(msccs)} module cycles')
sys.exit(1 if sccs or msccs else 0)
