//! clip.cpp's image resizes, reproduced with its float arithmetic so the bytes a tower sees
//! are llama.cpp's (the numpy port in `benches/mmproj_reference.py` is bit-identical to the
//! C++; `tests/mmproj.rs` compares against its output).

/// The colour clip.cpp pads LLaVA images with (the CLIP mean, in bytes).
pub(super) const LLAVA_PAD: [u8; 3] = [122, 116, 104];

/// clip.cpp's `img_tool::resize` with padding: the aspect-preserving size (f32 arithmetic,
/// rounded up, at most the target), resized bicubically, centred on a `pad` canvas.
pub(super) fn resize_padded(
    img: &image::RgbImage,
    tw: u32,
    th: u32,
    pad: [u8; 3],
) -> image::RgbImage {
    let (nx, ny) = img.dimensions();
    if (nx, ny) == (tw, th) {
        return img.clone();
    }
    let scale = (tw as f32 / nx as f32).min(th as f32 / ny as f32);
    let new_w = ((nx as f32 * scale).ceil() as u32).clamp(1, tw);
    let new_h = ((ny as f32 * scale).ceil() as u32).clamp(1, th);
    let resized = resize_bicubic(img, new_w, new_h);
    let mut out = image::RgbImage::from_pixel(tw, th, image::Rgb(pad));
    let (ox, oy) = ((tw - new_w) / 2, (th - new_h) / 2);
    for (x, y, p) in resized.enumerate_pixels() {
        out.put_pixel(x + ox, y + oy, *p);
    }
    out
}

/// clip.cpp's `img_tool::resize_bicubic`, with its float and double arithmetic, so the
/// bytes match llama.cpp's (the reference's port of it is bit-identical to the C++).
pub(super) fn resize_bicubic(img: &image::RgbImage, tw: u32, th: u32) -> image::RgbImage {
    let (nx, ny) = (img.width() as i64, img.height() as i64);
    let tx = nx as f32 / tw as f32;
    let ty = ny as f32 / th as f32;
    let coeffs = |d0: f64, d2: f64, d3: f64| -> (f32, f32, f32) {
        (
            (-1.0 / 3.0 * d0 + d2 - 1.0 / 6.0 * d3) as f32,
            (1.0 / 2.0 * d0 + 1.0 / 2.0 * d2) as f32,
            (-1.0 / 6.0 * d0 - 1.0 / 2.0 * d2 + 1.0 / 6.0 * d3) as f32,
        )
    };
    let poly = |a0: f32, (a1, a2, a3): (f32, f32, f32), d: f32| -> f32 {
        ((a0 + a1 * d) + (a2 * d) * d) + ((a3 * d) * d) * d
    };
    let px = |x: i64, y: i64, c: usize| -> i64 {
        img.get_pixel(x.clamp(0, nx - 1) as u32, y.clamp(0, ny - 1) as u32)[c] as i64
    };
    let mut out = image::RgbImage::new(tw, th);
    for i in 0..th {
        let fy = ty * i as f32;
        let y = fy as i64;
        let dy = fy - y as f32;
        for j in 0..tw {
            let fx = tx * j as f32;
            let x = fx as i64;
            let dx = fx - x as f32;
            let mut rgb = [0u8; 3];
            for (k, v) in rgb.iter_mut().enumerate() {
                let mut col = [0f32; 4];
                for (jj, cj) in col.iter_mut().enumerate() {
                    let yy = y - 1 + jj as i64;
                    let p: [i64; 4] = [
                        px(x - 1, yy, k),
                        px(x, yy, k),
                        px(x + 1, yy, k),
                        px(x + 2, yy, k),
                    ];
                    let a = coeffs(
                        (p[0] - p[1]) as f64,
                        (p[2] - p[1]) as f64,
                        (p[3] - p[1]) as f64,
                    );
                    *cj = poly(p[1] as f32, a, dx);
                }
                let a = coeffs(
                    (col[0] - col[1]) as f64,
                    (col[2] - col[1]) as f64,
                    (col[3] - col[1]) as f64,
                );
                let c = poly(col[1], a, dy) as f64;
                // std::round: half away from zero.
                *v = (c.signum() * (c.abs() + 0.5).floor()).clamp(0.0, 255.0) as u8;
            }
            out.put_pixel(j, i, image::Rgb(rgb));
        }
    }
    out
}

/// clip.cpp's `img_tool::resize_bilinear` (a stretch; the result truncated to bytes), as
/// mtmd's llava-uhd preprocessing resizes MiniCPM-V's overview image.
pub(super) fn resize_bilinear(img: &image::RgbImage, tw: u32, th: u32) -> image::RgbImage {
    let (nx, ny) = (img.width() as usize, img.height() as usize);
    if nx < 2 || ny < 2 {
        // The C++ reads a 2x2 neighbourhood; a one-pixel-wide image is replicated first.
        let grown = image::imageops::resize(
            img,
            nx.max(2) as u32,
            ny.max(2) as u32,
            image::imageops::FilterType::Nearest,
        );
        return resize_bilinear(&grown, tw, th);
    }
    let x_ratio = (nx - 1) as f32 / tw as f32;
    let y_ratio = (ny - 1) as f32 / th as f32;
    let lerp = |s: f32, e: f32, t: f32| s + (e - s) * t;
    let mut out = image::RgbImage::new(tw, th);
    for y in 0..th {
        let py = y_ratio * y as f32;
        let yf = (py as usize).min(ny - 2);
        let yl = py - yf as f32;
        for x in 0..tw {
            let px = x_ratio * x as f32;
            let xf = (px as usize).min(nx - 2);
            let xl = px - xf as f32;
            let at = |xx: usize, yy: usize, c: usize| img.get_pixel(xx as u32, yy as u32)[c] as f32;
            let mut rgb = [0u8; 3];
            for (c, v) in rgb.iter_mut().enumerate() {
                let top = lerp(at(xf, yf, c), at(xf + 1, yf, c), xl);
                let bottom = lerp(at(xf, yf + 1, c), at(xf + 1, yf + 1, c), xl);
                *v = lerp(top, bottom, yl) as u8;
            }
            out.put_pixel(x, y, image::Rgb(rgb));
        }
    }
    out
}

/// mtmd's llava-uhd `ensure_divide`: the nearest multiple of `patch` (at least one patch).
fn ensure_divide(length: u32, patch: u32) -> u32 {
    let q = length as f32 / patch as f32;
    // std::round: half away from zero.
    ((q + 0.5).floor() as u32).max(1) * patch
}

/// mtmd's llava-uhd `get_best_resize`: the size an overview image is stretched to. Large
/// images shrink to about `scale` squared pixels keeping their aspect; small ones keep their
/// size unless `allow_upscale`; both sides are then rounded to whole patches.
pub(super) fn best_resize(
    w: u32,
    h: u32,
    scale: u32,
    patch: u32,
    allow_upscale: bool,
) -> (u32, u32) {
    let (mut w, mut h) = (w, h);
    if (w as u64 * h as u64) > (scale as u64 * scale as u64) || allow_upscale {
        let r = w as f32 / h as f32;
        h = (scale as f32 / r.sqrt()) as u32;
        w = (h as f32 * r) as u32;
    }
    (ensure_divide(w, patch), ensure_divide(h, patch))
}

/// The size mtmd's llava-uhd preprocessing gives MiniCPM-V's overview image: the square
/// `image_size` for an image that fits in it, else [`best_resize`] without upscaling.
pub(super) fn overview_size(w: u32, h: u32, image_size: u32, patch: u32) -> (u32, u32) {
    if w > image_size || h > image_size {
        best_resize(w, h, image_size, patch, false)
    } else {
        (image_size, image_size)
    }
}
