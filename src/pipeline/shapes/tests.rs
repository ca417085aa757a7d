use burn::tensor::Tensor;

use super::*;
use crate::data::test_util::TempDir;
use crate::denoiser::Denoiser;

type Nd = crate::TestBackend;
type Ad = burn::backend::Autodiff<Nd>;

/// The shipped model folder of `arch`.
fn shipped(arch: ShapesArch) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("weights")
        .join(format!("shapes-{arch}"))
}

/// A model saved to a folder loads back with the same outputs; its parameter paths are the
/// diffusers model's own (no enum variant); a config of the other architecture or a width
/// mismatch between the halves is refused, naming the field.
#[test]
fn models_round_trip_through_their_folder() {
    let device = Default::default();
    let vocab = Vocab::default();
    let ids = vec![vocab.encode("two red circles").unwrap()];
    let x = Tensor::<Nd, 4>::ones([1, 3, 32, 32], &device).mul_scalar(0.25);
    for arch in ShapesArch::ALL {
        let config = ShapesModelConfig::tiny(arch);
        let model: ShapesModel<Nd> = config.init(&device).unwrap();
        assert_eq!(model.arch(), arch);
        let dir = TempDir::new("shapes-model");
        let path = dir.path("base.safetensors");
        let stale = format!(".base.safetensors.tmp-{}", std::process::id());
        std::fs::write(dir.path(&stale), b"stale").unwrap();
        model.save_dir(&config, &dir.path("")).unwrap();
        model.save_dir(&config, &dir.path("")).unwrap(); // over an existing folder too
        let loaded: ShapesModel<Nd> = load_shapes_model(&dir.path(""), &device).unwrap();
        let output = |m: &ShapesModel<Nd>| {
            let cond = m.encode(&ids, &device).unwrap();
            let t = Tensor::<Nd, 1>::from_floats([500.0], &device);
            let out = m
                .denoiser
                .denoise(x.clone(), t, &cond, &mut crate::attention::NoHook);
            (cond.hidden.into_data(), out.unwrap().into_data())
        };
        assert_eq!(output(&model), output(&loaded), "{arch}");
        let bytes = std::fs::read(&path).unwrap();
        let names: Vec<String> = safetensors::SafeTensors::deserialize(&bytes)
            .unwrap()
            .names()
            .into_iter()
            .map(str::to_string)
            .collect();
        let expected = match arch {
            ShapesArch::Mmdit => "denoiser.transformer_blocks.0.attn.to_q.base.weight",
            ShapesArch::Unet => "denoiser.down_blocks.1.attentions.0.proj_in.weight",
        };
        assert!(names.iter().any(|n| n == expected), "{arch}: {names:?}");
        assert!(
            !names
                .iter()
                .any(|n| n.contains("Mmdit") || n.contains("Unet")),
            "{arch}: {names:?}"
        );
        let other = ShapesArch::ALL.into_iter().find(|&a| a != arch).unwrap();
        let err = model
            .save_dir(&ShapesModelConfig::tiny(other), &dir.path(""))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains(&format!("saving a {arch}")), "{err}");
        let bad = ShapesModelConfig::new(config.text.clone().with_hidden_size(32), config.denoiser);
        let err = bad.init::<Nd>(&device).err().unwrap().to_string();
        let field = match arch {
            ShapesArch::Mmdit => "joint_attention_dim",
            ShapesArch::Unet => "cross_attention_dim",
        };
        assert!(err.contains(field), "{err}");
    }
    let err = load_shapes_model::<Nd>(std::path::Path::new("no/such/dir"), &device)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("no/such/dir/base_config.json"), "{err}");
}

/// A denoiser that knows the one clean image `x0` and returns the exact target for any input:
/// the flow velocity `(x - x0) / sigma`, or the DDPM v-target of the noise that `x` implies.
struct Oracle {
    x0: Tensor<Nd, 4>,
    arch: ShapesArch,
}

impl Denoiser<Nd> for Oracle {
    fn denoise<H: crate::attention::AttentionHook<Nd>>(
        &self,
        x: Tensor<Nd, 4>,
        timesteps: Tensor<Nd, 1>,
        _cond: &crate::denoiser::TextCond<Nd>,
        _hook: &mut H,
    ) -> crate::Result<Tensor<Nd, 4>> {
        let t = timesteps.into_data().to_vec::<f64>().unwrap()[0];
        let b = x.dims()[0];
        let x0 = self.x0.clone().repeat_dim(0, b / self.x0.dims()[0]);
        Ok(match self.arch {
            ShapesArch::Mmdit => (x - x0).div_scalar(t / 1000.0),
            ShapesArch::Unet => {
                let ab = crate::schedule::DdpmConfig::sd21().init().alphas_cumprod[t as usize];
                let eps = (x - x0.clone().mul_scalar(ab.sqrt())).div_scalar((1.0 - ab).sqrt());
                eps.mul_scalar(ab.sqrt()) - x0.mul_scalar((1.0 - ab).sqrt())
            }
        })
    }

    fn map_kind(&self) -> crate::attention::AttentionKind {
        crate::attention::AttentionKind::Cross
    }
}

/// Each architecture's sampler, fed exact predictions, ends where its closed form says: the
/// flow's straight paths land on `x0` exactly; deterministic DDIM keeps the implied noise `e`
/// of the first step and ends at `sqrt(a) x0 + sqrt(1 - a) e` with SD 2.1's final
/// `alphas_cumprod[0]` (`set_alpha_to_one` false). Guidance changes nothing when the
/// conditional and unconditional predictions agree.
#[test]
fn samplers_follow_exact_predictions_to_their_closed_form() {
    let device = Default::default();
    let x0 = Tensor::<Nd, 4>::from_floats([[[[0.5, -0.25], [1.0, 0.0]]]], &device);
    let noise = Tensor::<Nd, 4>::from_floats([[[[-1.0, 2.0], [0.3, 0.7]]]], &device);
    let cond = crate::denoiser::TextCond {
        hidden: Tensor::<Nd, 3>::zeros([1, 2, 4], &device),
        pooled: None,
    };
    for arch in ShapesArch::ALL {
        let oracle = Oracle {
            x0: x0.clone(),
            arch,
        };
        let expected = match arch {
            ShapesArch::Mmdit => x0.clone(),
            ShapesArch::Unet => {
                let ddpm = crate::schedule::DdpmConfig::sd21().init();
                let mut ddim = crate::schedule::DdimConfig::sd21().init().unwrap();
                let ts = ddim.set_timesteps(7).unwrap();
                let at = ddpm.alphas_cumprod[ts[0]];
                let e = (noise.clone() - x0.clone().mul_scalar(at.sqrt()))
                    .div_scalar((1.0 - at).sqrt());
                let a = ddpm.alphas_cumprod[0];
                x0.clone().mul_scalar(a.sqrt()) + e.mul_scalar((1.0 - a).sqrt())
            }
        };
        for guidance in [1.0, 3.0] {
            let out = arch
                .sample(&oracle, noise.clone(), &cond, &cond, 7, guidance)
                .unwrap();
            let diff: f64 = (out - expected.clone()).abs().max().into_scalar();
            assert!(diff < 1e-6, "{arch} guidance {guidance}: {diff}");
        }
    }
}

/// The training examples' shapes pipeline: word positions follow the tagger's words (case and
/// punctuation ignored), unknown words and images of the wrong size are refused by name, and
/// an architecture mismatch names both.
#[test]
fn shapes_pipeline_places_words_and_refuses_bad_input() {
    use crate::nouns::WordTokens;
    use crate::pipeline::TrainingPipeline;
    let device = Default::default();
    let vocab = Vocab::default();
    assert_eq!(
        vocab
            .word_tokens("A red circle, left of the square.")
            .unwrap(),
        (1..8).map(|p| vec![p]).collect::<Vec<_>>()
    );
    let err = vocab
        .word_tokens("a purple circle")
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"purple\""), "{err}");

    let (pipe, _unet) = load_shapes_pipeline::<Ad, crate::unet::UNet2DConditionModel<Ad>>(
        &shipped(ShapesArch::Unet),
        &device,
    )
    .unwrap();
    assert_eq!((pipe.arch, pipe.size), (ShapesArch::Unet, 32));
    let pixels = Tensor::<Nd, 4>::ones([1, 3, 32, 32], &device);
    let same = pipe.encode_images(pixels.clone(), true).unwrap();
    assert_eq!(same.into_data(), pixels.into_data());
    let err = pipe
        .encode_images(Tensor::<Nd, 4>::ones([1, 3, 64, 64], &device), false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("3x32x32") && err.contains("3x64x64"), "{err}");
    let cond = pipe.encode(&["Two RED circles."]).unwrap();
    let direct = load_shapes_model::<Nd>(&shipped(ShapesArch::Unet), &device)
        .unwrap()
        .encode(&[vocab.encode("two red circles").unwrap()], &device)
        .unwrap();
    assert_eq!(cond.hidden.into_data(), direct.hidden.into_data());

    let err = load_shapes_pipeline::<Ad, crate::mmdit::SD3Transformer2DModel<Ad>>(
        &shipped(ShapesArch::Unet),
        &device,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("unet") && err.contains("mmdit"), "{err}");
}
