//! The KServe v2 binary tensor data extension: a JSON header of
//! `Inference-Header-Content-Length` bytes, then raw tensors. The first two
//! bytes of the input choose the header length; the rest is the body given to
//! `sluice_server::v2::http::parse`, the route's own decoder.
#![no_main]

use axum::http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use sluice_server::v2::{http, InputLimits, WireData};

fuzz_target!(|data: &[u8]| {
    let Some((len, body)) = data.split_first_chunk::<2>() else {
        return;
    };
    let len = usize::from(u16::from_le_bytes(*len));
    let mut headers = HeaderMap::new();
    headers.insert(http::HEADER_LENGTH, HeaderValue::from(len));
    let limits = InputLimits::default();
    if let Ok(parsed) = http::parse(&headers, body, &limits) {
        for t in &parsed.request.inputs {
            let numel = limits
                .shape
                .check(&t.shape)
                .expect("an accepted shape is within the limits");
            match &t.data {
                WireData::Numeric(n) => assert_eq!(n.numel(), numel),
                WireData::Bytes(b) => assert_eq!(b.len(), numel),
            }
            // What was decoded encodes back to raw bytes of the right size.
            let raw = sluice_server::v2::raw_bytes(t);
            if let WireData::Numeric(n) = &t.data {
                assert_eq!(raw.len(), n.numel() * n.dtype().size());
            }
        }
    }
});
