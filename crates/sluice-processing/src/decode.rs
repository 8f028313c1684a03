//! Decoding untrusted pictures within bounds.
//!
//! A small file can claim a huge picture: a 470 KB PNG of 22000 x 22000
//! decodes to 484 million pixels, 1.45 GB once in RGB. Two bounds keep that
//! from taking the process down:
//!
//! * **per picture**: the dimensions are read from the header first, and a
//!   picture of more than the model's `max_pixels` fails alone, before any
//!   pixel buffer exists; the decoder itself is also limited to the memory
//!   the picture needs (`image::Limits::max_alloc`);
//! * **all decodes in flight together**: each decode reserves the memory it
//!   will need (the decoder's buffer plus the RGB copy) from one process-wide
//!   [`DecodeBudget`] and waits while others hold it, so N processing threads
//!   decoding N large pictures at once stay within the budget. A picture that
//!   alone needs more than the whole budget fails alone.
//!
//! EXIF orientation (JPEG, PNG, WebP, TIFF) is applied after decoding, so the
//! picture a model sees, and the pixels of its boxes, are the picture as its
//! viewers show it.

use std::io::Cursor;
use std::sync::{Condvar, Mutex, PoisonError};

use ::image::{DynamicImage, ImageDecoder, ImageReader, Limits, RgbImage};
use sluice_core::ItemError;

/// Default of the process-wide decode budget: 1 GiB.
pub const DEFAULT_DECODE_MEMORY_BYTES: u64 = 1 << 30;

/// Memory that the decodes in flight may take together (see the module docs).
pub struct DecodeBudget {
    state: Mutex<BudgetState>,
    freed: Condvar,
}

struct BudgetState {
    limit: u64,
    used: u64,
}

/// The process-wide budget every image decode reserves from.
static BUDGET: DecodeBudget = DecodeBudget::new(DEFAULT_DECODE_MEMORY_BYTES);

impl DecodeBudget {
    /// A budget of `limit` bytes.
    pub const fn new(limit: u64) -> DecodeBudget {
        DecodeBudget {
            state: Mutex::new(BudgetState { limit, used: 0 }),
            freed: Condvar::new(),
        }
    }

    /// The budget shared by every image model of the process.
    pub fn global() -> &'static DecodeBudget {
        &BUDGET
    }

    /// Changes the limit (e.g. from `sluice serve --decode-memory-mb`);
    /// decodes already running keep their reservation.
    pub fn set_limit(&self, limit: u64) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.limit = limit.max(1);
        drop(s);
        self.freed.notify_all();
    }

    /// The current limit in bytes.
    pub fn limit(&self) -> u64 {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).limit
    }

    /// Bytes reserved by decodes in flight now.
    pub fn in_use(&self) -> u64 {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).used
    }

    /// Reserves `bytes`, waiting while other decodes hold too much of the
    /// budget. Fails at once when `bytes` alone is more than the limit.
    /// Blocking: call it from a processing thread.
    pub fn reserve(&self, bytes: u64) -> Result<Reservation<'_>, u64> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if bytes > s.limit {
                return Err(s.limit);
            }
            if s.used.saturating_add(bytes) <= s.limit {
                s.used += bytes;
                return Ok(Reservation { budget: self, bytes });
            }
            s = self.freed.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// Memory held from a [`DecodeBudget`]; given back when dropped.
pub struct Reservation<'a> {
    budget: &'a DecodeBudget,
    bytes: u64,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut s = self.budget.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.used = s.used.saturating_sub(self.bytes);
        drop(s);
        self.budget.freed.notify_all();
    }
}

/// A decoded picture in RGB, oriented, with the budget it holds.
pub struct Decoded<'a> {
    /// The pixels.
    pub image: RgbImage,
    /// Released when the caller is done with `image`.
    pub reservation: Reservation<'a>,
}

fn invalid(message: String) -> ItemError {
    ItemError::invalid(format!("cannot decode image: {message}"))
}

/// Decodes an encoded picture (JPEG, PNG) into RGB within `max_pixels` and
/// the memory `budget` allows, with its EXIF orientation applied.
pub fn decode_rgb<'a>(bytes: &[u8], max_pixels: u64, budget: &'a DecodeBudget) -> Result<Decoded<'a>, ItemError> {
    let reader = || {
        ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| invalid(e.to_string()))
    };
    let (width, height) = reader()?.into_dimensions().map_err(|e| invalid(e.to_string()))?;
    let pixels = u64::from(width) * u64::from(height);
    if pixels > max_pixels {
        return Err(ItemError::invalid(format!(
            "image is {width}x{height} = {pixels} pixels, more than this model accepts ({max_pixels}, \
             `max_pixels` in model.toml)"
        )));
    }
    let mut limited = reader()?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(width);
    limits.max_image_height = Some(height);
    limited.limits(limits);
    let mut decoder = limited.into_decoder().map_err(|e| invalid(e.to_string()))?;
    // The decoder's own buffer, plus the RGB copy when the picture is not RGB8.
    let decoded_bytes = decoder.total_bytes();
    let rgb_bytes = pixels.saturating_mul(3);
    let needed = if decoder.color_type() == ::image::ColorType::Rgb8 {
        decoded_bytes
    } else {
        decoded_bytes.saturating_add(rgb_bytes)
    };
    let reservation = budget.reserve(needed).map_err(|limit| {
        ItemError::invalid(format!(
            "image is {width}x{height}; decoding it needs {} MiB, more than the decode memory limit of {} MiB",
            needed >> 20,
            limit >> 20
        ))
    })?;
    let mut decoder_limits = Limits::default();
    decoder_limits.max_image_width = Some(width);
    decoder_limits.max_image_height = Some(height);
    decoder_limits.max_alloc = Some(decoded_bytes.saturating_add(1 << 20));
    decoder.set_limits(decoder_limits).map_err(|e| invalid(e.to_string()))?;
    let orientation = decoder.orientation().map_err(|e| invalid(e.to_string()))?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(|e| invalid(e.to_string()))?;
    image.apply_orientation(orientation);
    let image = match image {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.into_rgb8(),
    };
    Ok(Decoded { image, reservation })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_reservation_larger_than_the_budget_fails_and_others_wait_for_room() {
        let budget = Arc::new(DecodeBudget::new(100));
        assert_eq!(budget.reserve(101).err(), Some(100));
        let first = budget.reserve(60).expect("fits");
        assert_eq!(budget.in_use(), 60);
        let b = budget.clone();
        let waiter = std::thread::spawn(move || {
            let _held = b.reserve(60).expect("fits once the first is back");
            b.in_use()
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished(), "the second reservation must wait for room");
        drop(first);
        assert_eq!(waiter.join().expect("waiter"), 60);
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn a_decompression_bomb_fails_from_its_header_before_any_pixel_is_decoded() {
        let png = crate::test_util::bomb_png(22_000, 22_000);
        assert!(png.len() < 2 << 20, "a small file: {} bytes", png.len());
        let budget = DecodeBudget::new(DEFAULT_DECODE_MEMORY_BYTES);
        let err = decode_rgb(&png, DEFAULT_PIXELS, &budget).err().expect("refused");
        assert_eq!(err.kind, sluice_core::ItemErrorKind::InvalidInput);
        assert!(
            err.message.contains("22000x22000 = 484000000 pixels"),
            "{}",
            err.message
        );
        assert!(err.message.contains("max_pixels"), "{}", err.message);
        assert_eq!(budget.in_use(), 0, "refused before reserving anything");
    }

    const DEFAULT_PIXELS: u64 = sluice_core::spec::DEFAULT_MAX_PIXELS;

    #[test]
    fn a_picture_needing_more_than_the_whole_budget_fails_alone_and_one_within_it_decodes() {
        let png = crate::test_util::bomb_png(3000, 3000);
        // 9 MB of gray + 27 MB of RGB: more than a 16 MiB budget.
        let small = DecodeBudget::new(16 << 20);
        let err = decode_rgb(&png, DEFAULT_PIXELS, &small).err().expect("over budget");
        assert!(err.message.contains("decode memory limit of 16 MiB"), "{}", err.message);
        let roomy = DecodeBudget::new(64 << 20);
        let decoded = decode_rgb(&png, DEFAULT_PIXELS, &roomy).expect("within budget");
        assert_eq!(decoded.image.dimensions(), (3000, 3000));
        assert_eq!(roomy.in_use(), 9_000_000 + 27_000_000);
        drop(decoded);
        assert_eq!(roomy.in_use(), 0);
    }

    /// A JPEG of `w` x `h` whose left half is red and right half blue, with
    /// an EXIF APP1 segment giving `orientation`.
    fn jpeg_with_orientation(w: u32, h: u32, orientation: u16) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, _| {
            if x < w / 2 {
                ::image::Rgb([255, 0, 0])
            } else {
                ::image::Rgb([0, 0, 255])
            }
        });
        let mut jpeg = Vec::new();
        ::image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
            .encode_image(&img)
            .expect("encode");
        // TIFF header (little endian), one IFD entry: Orientation (0x0112), SHORT, 1 value.
        let mut tiff = b"II*\0\x08\0\0\0".to_vec();
        tiff.extend_from_slice(&1u16.to_le_bytes());
        tiff.extend_from_slice(&0x0112u16.to_le_bytes());
        tiff.extend_from_slice(&3u16.to_le_bytes());
        tiff.extend_from_slice(&1u32.to_le_bytes());
        tiff.extend_from_slice(&orientation.to_le_bytes());
        tiff.extend_from_slice(&[0, 0]);
        tiff.extend_from_slice(&0u32.to_le_bytes());
        let mut app1 = b"Exif\0\0".to_vec();
        app1.extend_from_slice(&tiff);
        let mut out = jpeg[..2].to_vec();
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&u16::try_from(app1.len() + 2).expect("short").to_be_bytes());
        out.extend_from_slice(&app1);
        out.extend_from_slice(&jpeg[2..]);
        out
    }

    #[test]
    fn exif_orientation_is_applied() {
        let budget = DecodeBudget::new(DEFAULT_DECODE_MEMORY_BYTES);
        let upright = decode_rgb(&jpeg_with_orientation(40, 20, 1), DEFAULT_PIXELS, &budget).expect("decodes");
        assert_eq!(upright.image.dimensions(), (40, 20));
        // 6: the camera was turned; viewers rotate 90 degrees clockwise.
        let turned = decode_rgb(&jpeg_with_orientation(40, 20, 6), DEFAULT_PIXELS, &budget).expect("decodes");
        assert_eq!(turned.image.dimensions(), (20, 40));
        // The red left half is on top once rotated clockwise.
        let top = turned.image.get_pixel(10, 5);
        let bottom = turned.image.get_pixel(10, 35);
        assert!(top[0] > 200 && top[2] < 60, "top {top:?}");
        assert!(bottom[2] > 200 && bottom[0] < 60, "bottom {bottom:?}");
    }
}
