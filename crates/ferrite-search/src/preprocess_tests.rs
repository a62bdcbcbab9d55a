use std::io::Cursor;

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder, Rgb, RgbImage};

use super::*;

fn png(image: &RgbImage, exif: Option<Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = PngEncoder::new(&mut out);
    if let Some(exif) = exif {
        encoder.set_exif_metadata(exif).unwrap();
    }
    encoder
        .write_image(
            image.as_raw(),
            image.width(),
            image.height(),
            ExtendedColorType::Rgb8,
        )
        .unwrap();
    out
}

fn jpeg(image: &RgbImage, exif: Option<Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = JpegEncoder::new_with_quality(&mut out, 100);
    if let Some(exif) = exif {
        encoder.set_exif_metadata(exif).unwrap();
    }
    encoder
        .write_image(
            image.as_raw(),
            image.width(),
            image.height(),
            ExtendedColorType::Rgb8,
        )
        .unwrap();
    out
}

/// A little-endian TIFF block with one IFD entry: Orientation (0x0112), SHORT, `value`.
fn exif_orientation(value: u16) -> Vec<u8> {
    let mut b = vec![b'I', b'I', 42, 0, 8, 0, 0, 0];
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&0x0112u16.to_le_bytes());
    b.extend_from_slice(&3u16.to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&value.to_le_bytes());
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(&0u32.to_le_bytes());
    b
}

/// An upright picture no rotation or flip maps onto itself: four coloured 16-pixel blocks
/// in a 64 × 32 frame.
fn upright() -> RgbImage {
    RgbImage::from_fn(64, 32, |x, y| match (x / 32, y / 16) {
        (0, 0) => Rgb([250, 20, 20]),
        (1, 0) => Rgb([20, 250, 20]),
        (0, 1) => Rgb([20, 20, 250]),
        _ => Rgb([240, 240, 20]),
    })
}

fn preprocessor() -> Preprocessor {
    Preprocessor::new(PreprocessConfig::default()).unwrap()
}

#[test]
fn output_is_nchw_crop_by_crop() {
    let p = preprocessor();
    let one = p.preprocess(&png(&upright(), None)).unwrap();
    assert_eq!(one.len(), 3 * 224 * 224);
    let batch = p
        .preprocess_batch(&[png(&upright(), None), jpeg(&upright(), None)])
        .unwrap();
    assert_eq!(batch.shape(), [2, 3, 224, 224]);
    assert_eq!(batch.data.len(), 2 * 3 * 224 * 224);
    assert_eq!(batch.image(0), &one[..]);
}

#[test]
fn constant_colour_normalises_per_channel() {
    let image = RgbImage::from_pixel(300, 500, Rgb([255, 0, 51]));
    let config = PreprocessConfig {
        normalization: Normalization {
            mean: [0.5, 0.25, 0.2],
            std: [0.5, 0.25, 0.1],
        },
        ..PreprocessConfig::default()
    };
    let out = Preprocessor::new(config)
        .unwrap()
        .preprocess(&png(&image, None))
        .unwrap();
    let plane = 224 * 224;
    // (255/255 - 0.5)/0.5 = 1; (0 - 0.25)/0.25 = -1; (51/255 - 0.2)/0.1 = 0.
    for (c, expected) in [1.0f32, -1.0, 0.0].into_iter().enumerate() {
        let channel = &out[c * plane..(c + 1) * plane];
        assert!(
            channel.iter().all(|v| (v - expected).abs() < 1e-5),
            "channel {c}: expected {expected}, got e.g. {}",
            channel[0]
        );
    }
}

#[test]
fn exif_orientation_turns_the_image_upright() {
    let p = preprocessor();
    let reference = p.preprocess(&png(&upright(), None)).unwrap();
    // Orientation 6 means "rotate 90° clockwise to display", so the stored pixels are the
    // upright picture turned 90° counter-clockwise; 3 is a half turn; 2 a mirror.
    let stored = [
        (6u16, image::imageops::rotate270(&upright())),
        (8, image::imageops::rotate90(&upright())),
        (3, image::imageops::rotate180(&upright())),
        (2, image::imageops::flip_horizontal(&upright())),
    ];
    for (tag, pixels) in &stored {
        let out = p.preprocess(&png(pixels, Some(exif_orientation(*tag)))).unwrap();
        assert_eq!(out, reference, "PNG with orientation {tag}");
        let untagged = p.preprocess(&png(pixels, None)).unwrap();
        assert_ne!(untagged, reference, "the control must differ (tag {tag})");
    }
    // JPEG is lossy, so the rotated file's pixels differ slightly from the upright file's.
    let jpeg_reference = p.preprocess(&jpeg(&upright(), None)).unwrap();
    let rotated = p
        .preprocess(&jpeg(&stored[0].1, Some(exif_orientation(6))))
        .unwrap();
    let worst = rotated
        .iter()
        .zip(&jpeg_reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 0.1, "JPEG with orientation 6 differs by {worst}");
}

#[test]
fn empty_bytes_are_refused() {
    assert!(matches!(
        preprocessor().preprocess(&[]),
        Err(PreprocessError::Empty)
    ));
}

#[test]
fn truncated_jpeg_is_refused() {
    let bytes = jpeg(&upright(), None);
    let err = preprocessor().preprocess(&bytes[..bytes.len() / 2]).unwrap_err();
    assert!(matches!(err, PreprocessError::Corrupt { .. }), "got {err:?}");
}

#[test]
fn corrupt_png_is_refused() {
    let mut bytes = png(&upright(), None);
    let len = bytes.len();
    bytes[len - 30..len - 12].fill(0xAB);
    let err = preprocessor().preprocess(&bytes).unwrap_err();
    assert!(matches!(err, PreprocessError::Corrupt { .. }), "got {err:?}");
}

/// A PNG whose header claims `width × height`, with a one-byte IDAT: the decoder reads the
/// header fine, and decoding the pixels would need width × height × 3 bytes.
fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let crc = crc32(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }
    let mut out = vec![0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(
        &mut out,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    chunk(&mut out, b"IEND", &[]);
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn decompression_bomb_is_refused_from_the_header() {
    let err = preprocessor()
        .preprocess(&png_claiming(100_000, 100_000))
        .unwrap_err();
    assert!(
        matches!(
            err,
            PreprocessError::TooLarge {
                width: 100_000,
                height: 100_000,
                ..
            }
        ),
        "got {err:?}"
    );
    // Within width and height but over the pixel count.
    let err = preprocessor()
        .preprocess(&png_claiming(10_000, 10_000))
        .unwrap_err();
    assert!(matches!(err, PreprocessError::TooLarge { .. }), "got {err:?}");
}

#[test]
fn over_the_byte_limit_is_refused() {
    let config = PreprocessConfig {
        limits: ImageLimits {
            max_bytes: 100,
            ..ImageLimits::default()
        },
        ..PreprocessConfig::default()
    };
    let err = Preprocessor::new(config)
        .unwrap()
        .preprocess(&png(&upright(), None))
        .unwrap_err();
    assert!(
        matches!(err, PreprocessError::TooManyBytes { max_bytes: 100, .. }),
        "got {err:?}"
    );
}

#[test]
fn gif_and_unknown_bytes_are_refused() {
    let gif = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;";
    let err = preprocessor().preprocess(gif).unwrap_err();
    assert!(
        matches!(&err, PreprocessError::Unsupported { format } if format.contains("Gif")),
        "got {err:?}"
    );
    let err = preprocessor().preprocess(b"hello, not an image").unwrap_err();
    assert!(matches!(err, PreprocessError::UnknownFormat), "got {err:?}");
}

#[test]
fn batch_error_names_the_bad_image() {
    let err = preprocessor()
        .preprocess_batch(&[png(&upright(), None), Vec::new()])
        .unwrap_err();
    assert!(
        matches!(&err, PreprocessError::InBatch { index: 1, source } if matches!(**source, PreprocessError::Empty)),
        "got {err:?}"
    );
    assert!(err.to_string().starts_with("image 1 of the batch"));
}

#[test]
fn webp_decodes() {
    let mut out = Vec::new();
    image::codecs::webp::WebPEncoder::new_lossless(Cursor::new(&mut out))
        .write_image(upright().as_raw(), 64, 32, ExtendedColorType::Rgb8)
        .unwrap();
    let reference = preprocessor().preprocess(&png(&upright(), None)).unwrap();
    assert_eq!(preprocessor().preprocess(&out).unwrap(), reference);
}

#[test]
fn bad_config_is_refused() {
    let config = PreprocessConfig {
        crop: 300,
        ..PreprocessConfig::default()
    };
    assert!(matches!(
        Preprocessor::new(config),
        Err(PreprocessError::Config(_))
    ));
}
