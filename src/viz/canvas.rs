//! The plotters drawing backend of our plots: plotters' bitmap backend over an RGB buffer for
//! shapes, with text drawn in the embedded face by [`raster`](super::text::raster) (exact
//! glyph placement, no font lookup).

use image::RgbImage;
use plotters::backend::BitMapBackend;
use plotters::coord::Shift;
use plotters::drawing::{DrawingArea, DrawingAreaErrorKind, IntoDrawingArea};
use plotters::style::WHITE;
use plotters_backend::text_anchor::{HPos, VPos};
use plotters_backend::{
    BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingBackend, DrawingErrorKind,
    FontStyle,
};

use super::text::{TextStyle, raster, register_with_plotters, text_width};

/// What drawing on a [`Canvas`] can fail with (a layout that does not fit, mostly).
pub(crate) type PlotError =
    DrawingAreaErrorKind<<BitMapBackend<'static> as DrawingBackend>::ErrorType>;

/// plotters' bitmap backend, but drawing and measuring text with the embedded face.
pub(crate) struct Canvas<'a>(BitMapBackend<'a>);

type Failure<'a> = DrawingErrorKind<<BitMapBackend<'a> as DrawingBackend>::ErrorType>;

impl<'a> DrawingBackend for Canvas<'a> {
    type ErrorType = <BitMapBackend<'a> as DrawingBackend>::ErrorType;

    fn get_size(&self) -> (u32, u32) {
        self.0.get_size()
    }

    fn ensure_prepared(&mut self) -> Result<(), Failure<'a>> {
        self.0.ensure_prepared()
    }

    fn present(&mut self) -> Result<(), Failure<'a>> {
        self.0.present()
    }

    fn draw_pixel(&mut self, point: BackendCoord, color: BackendColor) -> Result<(), Failure<'a>> {
        self.0.draw_pixel(point, color)
    }

    fn draw_line<S: BackendStyle>(
        &mut self,
        from: BackendCoord,
        to: BackendCoord,
        style: &S,
    ) -> Result<(), Failure<'a>> {
        self.0.draw_line(from, to, style)
    }

    fn draw_rect<S: BackendStyle>(
        &mut self,
        upper_left: BackendCoord,
        bottom_right: BackendCoord,
        style: &S,
        fill: bool,
    ) -> Result<(), Failure<'a>> {
        self.0.draw_rect(upper_left, bottom_right, style, fill)
    }

    fn blit_bitmap(
        &mut self,
        pos: BackendCoord,
        size: (u32, u32),
        src: &[u8],
    ) -> Result<(), Failure<'a>> {
        self.0.blit_bitmap(pos, size, src)
    }

    /// The text's line box (its width, `size` high) anchored at `pos` as the style says,
    /// then turned about `pos` by the style's rotation (the y axis name is turned 270
    /// degrees), as plotters' default does.
    fn draw_text<S: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &S,
        pos: BackendCoord,
    ) -> Result<(), Failure<'a>> {
        let colour = style.color();
        if colour.alpha == 0.0 {
            return Ok(());
        }
        let (size, bold) = (
            style.size() as f32,
            matches!(style.style(), FontStyle::Bold),
        );
        let w = text_width(text, text_style(size, bold)) as i32;
        let h = size.ceil() as i32;
        let anchor = style.anchor();
        let dx = match anchor.h_pos {
            HPos::Left => 0,
            HPos::Right => -w,
            HPos::Center => -w / 2,
        };
        let dy = match anchor.v_pos {
            VPos::Top => 0,
            VPos::Center => -h / 2,
            VPos::Bottom => -h,
        };
        let turn = style.transform();
        let (width, height) = self.0.get_size();
        let mut result = Ok(());
        raster(text, size, bold, |x, y, coverage| {
            let (x, y) = turn.transform(x + dx, y + dy);
            let (x, y) = (pos.0 + x, pos.1 + y);
            if result.is_ok() && x >= 0 && y >= 0 && (x as u32) < width && (y as u32) < height {
                let ink = BackendColor {
                    alpha: colour.alpha * coverage as f64,
                    rgb: colour.rgb,
                };
                result = self.0.draw_pixel((x, y), ink);
            }
        });
        result
    }

    fn estimate_text_size<S: BackendTextStyle>(
        &self,
        text: &str,
        style: &S,
    ) -> Result<(u32, u32), Failure<'a>> {
        let (size, bold) = (
            style.size() as f32,
            matches!(style.style(), FontStyle::Bold),
        );
        Ok((text_width(text, text_style(size, bold)), size.ceil() as u32))
    }
}

fn text_style(size: f32, bold: bool) -> TextStyle {
    TextStyle {
        bold,
        ..TextStyle::new(size)
    }
}

/// Runs `draw` on a white `width` x `height` drawing area and returns what it drew.
pub(crate) fn render(
    width: u32,
    height: u32,
    draw: impl FnOnce(&DrawingArea<Canvas<'_>, Shift>) -> Result<(), PlotError>,
) -> Result<RgbImage, PlotError> {
    register_with_plotters();
    let mut buf = vec![255u8; width as usize * height as usize * 3];
    {
        let area =
            Canvas(BitMapBackend::with_buffer(&mut buf, (width, height))).into_drawing_area();
        area.fill(&WHITE)?;
        draw(&area)?;
        area.present()?;
    }
    // The buffer has exactly `width * height * 3` bytes.
    Ok(RgbImage::from_raw(width, height, buf).unwrap_or_default())
}
