//! Image bytes → the embedder's input: an NCHW `f32` tensor of `crop × crop` RGB images.
//!
//! Steps, per image: refuse what breaks a limit (byte size first, then the dimensions the
//! header declares, before any pixel is decoded), decode JPEG, PNG or WebP, turn it upright
//! by its EXIF orientation, resize so the shorter side is `resize_shorter` (triangle filter),
//! cut the centred `crop × crop` square, and normalise each channel.

use std::io::Cursor;

use image::imageops::FilterType;
use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader};

/// Errors from turning image bytes into a tensor. Every variant is the caller's input at
/// fault (a server answers INVALID_ARGUMENT), except `Config`, which is the operator's.
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    #[error("image is empty: expected the bytes of a JPEG, PNG or WebP file")]
    Empty,
    #[error("image is {bytes} bytes, the limit is {max_bytes} bytes")]
    TooManyBytes { bytes: usize, max_bytes: usize },
    #[error(
        "image declares {width}x{height} pixels; the limits are {max_width} wide, {max_height} high and {max_pixels} pixels in all"
    )]
    TooLarge {
        width: u32,
        height: u32,
        max_width: u32,
        max_height: u32,
        max_pixels: u64,
    },
    #[error("image format {format} is not supported: expected JPEG, PNG or WebP")]
    Unsupported { format: String },
    #[error("image format not recognised from its first bytes: expected JPEG, PNG or WebP")]
    UnknownFormat,
    #[error("image has a zero dimension ({width}x{height})")]
    ZeroSize { width: u32, height: u32 },
    #[error("{format} image could not be decoded (corrupt or truncated): {reason}")]
    Corrupt { format: String, reason: String },
    #[error("{format} image needs more memory to decode than the limits allow: {reason}")]
    DecoderLimit { format: String, reason: String },
    #[error("image {index} of the batch: {source}")]
    InBatch {
        index: usize,
        #[source]
        source: Box<PreprocessError>,
    },
    #[error("preprocessing config: {0}")]
    Config(String),
}

/// Per-channel normalisation, applied to pixel values scaled to `0..=1` (that is, `x / 255`):
/// `out = (x / 255 - mean[c]) / std[c]`, channels in RGB order.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Normalization {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Normalization {
    /// Maps `0..=255` to `-1..=1` on every channel.
    pub const SYMMETRIC: Normalization = Normalization {
        mean: [0.5; 3],
        std: [0.5; 3],
    };
    /// The ImageNet statistics torchvision models are trained with.
    pub const IMAGENET: Normalization = Normalization {
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    };
}

impl Default for Normalization {
    fn default() -> Self {
        Normalization::SYMMETRIC
    }
}

/// What an image may be before it is decoded.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImageLimits {
    /// Largest encoded size in bytes (default 10 MiB).
    pub max_bytes: usize,
    /// Largest width × height the header may declare (default 40 million).
    pub max_pixels: u64,
    /// Largest width (default 12,000).
    pub max_width: u32,
    /// Largest height (default 12,000).
    pub max_height: u32,
}

impl Default for ImageLimits {
    fn default() -> Self {
        ImageLimits {
            max_bytes: 10 * 1024 * 1024,
            max_pixels: 40_000_000,
            max_width: 12_000,
            max_height: 12_000,
        }
    }
}

/// How images become tensors.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PreprocessConfig {
    /// The shorter side is resized to this many pixels (default 256).
    pub resize_shorter: u32,
    /// Side of the centred square cut after resizing (default 224).
    pub crop: u32,
    pub normalization: Normalization,
    pub limits: ImageLimits,
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        PreprocessConfig {
            resize_shorter: 256,
            crop: 224,
            normalization: Normalization::default(),
            limits: ImageLimits::default(),
        }
    }
}

/// Images laid out as one NCHW tensor: `data.len() == n * 3 * side * side`.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageBatch {
    pub data: Vec<f32>,
    pub n: usize,
    pub side: usize,
}

impl ImageBatch {
    /// `[n, 3, side, side]`.
    pub fn shape(&self) -> [usize; 4] {
        [self.n, 3, self.side, self.side]
    }

    /// The `i`-th image's `3 * side * side` values.
    pub fn image(&self, i: usize) -> &[f32] {
        let len = 3 * self.side * self.side;
        &self.data[i * len..(i + 1) * len]
    }
}

/// Turns image bytes into the embedder's input tensor.
#[derive(Debug, Clone)]
pub struct Preprocessor {
    config: PreprocessConfig,
}

impl Preprocessor {
    pub fn new(config: PreprocessConfig) -> Result<Self, PreprocessError> {
        if config.crop == 0 || config.resize_shorter < config.crop {
            return Err(PreprocessError::Config(format!(
                "crop must be at least 1 and resize_shorter at least crop; got crop {} and resize_shorter {}",
                config.crop, config.resize_shorter
            )));
        }
        if config
            .normalization
            .std
            .iter()
            .any(|s| !s.is_finite() || *s == 0.0)
            || config.normalization.mean.iter().any(|m| !m.is_finite())
        {
            return Err(PreprocessError::Config(format!(
                "normalization must be finite with non-zero std; got {:?}",
                config.normalization
            )));
        }
        Ok(Preprocessor { config })
    }

    pub fn config(&self) -> &PreprocessConfig {
        &self.config
    }

    /// One image's `3 * crop * crop` values, channel-major (CHW).
    pub fn preprocess(&self, bytes: &[u8]) -> Result<Vec<f32>, PreprocessError> {
        let side = self.config.crop as usize;
        let mut out = vec![0.0; 3 * side * side];
        self.preprocess_into(bytes, &mut out)?;
        Ok(out)
    }

    /// Several images as one `[n, 3, crop, crop]` tensor; the first bad image fails the batch
    /// with its position.
    pub fn preprocess_batch<B: AsRef<[u8]>>(&self, images: &[B]) -> Result<ImageBatch, PreprocessError> {
        let side = self.config.crop as usize;
        let len = 3 * side * side;
        let mut data = vec![0.0; images.len() * len];
        for (index, (bytes, out)) in images.iter().zip(data.chunks_mut(len)).enumerate() {
            self.preprocess_into(bytes.as_ref(), out)
                .map_err(|e| PreprocessError::InBatch {
                    index,
                    source: Box::new(e),
                })?;
        }
        Ok(ImageBatch {
            data,
            n: images.len(),
            side,
        })
    }

    fn preprocess_into(&self, bytes: &[u8], out: &mut [f32]) -> Result<(), PreprocessError> {
        let image = self.decode(bytes)?;
        let cropped = self.resize_and_crop(&image);
        let side = self.config.crop as usize;
        let plane = side * side;
        let norm = &self.config.normalization;
        for (i, pixel) in cropped.pixels().enumerate() {
            for c in 0..3 {
                let x = f32::from(pixel[c]) / 255.0;
                out[c * plane + i] = (x - norm.mean[c]) / norm.std[c];
            }
        }
        Ok(())
    }

    /// Decodes `bytes` upright, refusing anything over the limits from the header alone.
    pub fn decode(&self, bytes: &[u8]) -> Result<DynamicImage, PreprocessError> {
        let limits = &self.config.limits;
        if bytes.is_empty() {
            return Err(PreprocessError::Empty);
        }
        if bytes.len() > limits.max_bytes {
            return Err(PreprocessError::TooManyBytes {
                bytes: bytes.len(),
                max_bytes: limits.max_bytes,
            });
        }
        let mut reader = ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| corrupt("unknown", &e))?;
        let format = match reader.format() {
            Some(f @ (ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP)) => f,
            Some(other) => {
                return Err(PreprocessError::Unsupported {
                    format: format!("{other:?}"),
                });
            }
            None => return Err(PreprocessError::UnknownFormat),
        };
        // Width and height are checked below against the header, with a message that names
        // them; the allocation cap (RGBA at 16 bits, plus slack for the decoder's own buffers)
        // backs that check up inside the decoder.
        let mut decoder_limits = image::Limits::default();
        decoder_limits.max_alloc = Some(limits.max_pixels.saturating_mul(8).saturating_add(1 << 26));
        reader.limits(decoder_limits);
        let name = format!("{format:?}");
        let mut decoder = reader.into_decoder().map_err(|e| self.decode_error(&name, e))?;
        let (width, height) = decoder.dimensions();
        self.check_dimensions(width, height)?;
        let orientation = decoder.orientation().map_err(|e| self.decode_error(&name, e))?;
        let mut image = DynamicImage::from_decoder(decoder).map_err(|e| self.decode_error(&name, e))?;
        image.apply_orientation(orientation);
        Ok(image)
    }

    fn check_dimensions(&self, width: u32, height: u32) -> Result<(), PreprocessError> {
        let limits = &self.config.limits;
        if width == 0 || height == 0 {
            return Err(PreprocessError::ZeroSize { width, height });
        }
        if width > limits.max_width
            || height > limits.max_height
            || u64::from(width) * u64::from(height) > limits.max_pixels
        {
            return Err(self.too_large(width, height));
        }
        Ok(())
    }

    fn too_large(&self, width: u32, height: u32) -> PreprocessError {
        let limits = &self.config.limits;
        PreprocessError::TooLarge {
            width,
            height,
            max_width: limits.max_width,
            max_height: limits.max_height,
            max_pixels: limits.max_pixels,
        }
    }

    fn decode_error(&self, format: &str, error: ImageError) -> PreprocessError {
        match error {
            ImageError::Limits(e) => PreprocessError::DecoderLimit {
                format: format.to_string(),
                reason: e.to_string(),
            },
            ImageError::Unsupported(e) => PreprocessError::Unsupported {
                format: format!("{format} ({e})"),
            },
            other => corrupt(format, &other),
        }
    }

    /// Shorter side to `resize_shorter`, then the centred `crop × crop` square, as RGB.
    fn resize_and_crop(&self, image: &DynamicImage) -> image::RgbImage {
        let (w, h) = (image.width(), image.height());
        let short = self.config.resize_shorter;
        let scaled = |long: u32, short_side: u32| -> u32 {
            ((f64::from(long) * f64::from(short) / f64::from(short_side)).round() as u32).max(short)
        };
        let (nw, nh) = if w <= h {
            (short, scaled(h, w))
        } else {
            (scaled(w, h), short)
        };
        let rgb = DynamicImage::ImageRgb8(image.to_rgb8());
        let resized = rgb.resize_exact(nw, nh, FilterType::Triangle);
        let crop = self.config.crop;
        let x = (nw - crop) / 2;
        let y = (nh - crop) / 2;
        resized.crop_imm(x, y, crop, crop).into_rgb8()
    }
}

fn corrupt(format: &str, error: &dyn std::fmt::Display) -> PreprocessError {
    PreprocessError::Corrupt {
        format: format.to_string(),
        reason: error.to_string(),
    }
}

#[cfg(test)]
#[path = "preprocess_tests.rs"]
mod tests;
