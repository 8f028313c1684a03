//! The KServe v2 HTTP request decoder on JSON bodies (no binary extension):
//! `sluice_server::v2::http::parse`, the function the `/v2/.../infer` route
//! calls. Any input must give `Ok` or a `V2Error`, never a panic, an abort or
//! an allocation beyond what the body can justify.
#![no_main]

use axum::http::HeaderMap;
use libfuzzer_sys::fuzz_target;
use sluice_server::v2::{http, InputLimits, WireData};

fuzz_target!(|data: &[u8]| {
    let limits = InputLimits::default();
    if let Ok(parsed) = http::parse(&HeaderMap::new(), data, &limits) {
        for t in &parsed.request.inputs {
            // Accepted shapes are within the limits, and the data fills them.
            let numel = limits
                .shape
                .check(&t.shape)
                .expect("an accepted shape is within the limits");
            assert!(t.shape.first().is_none_or(|&rows| rows <= limits.max_rows));
            match &t.data {
                WireData::Numeric(n) => assert_eq!(n.numel(), numel),
                WireData::Bytes(b) => assert_eq!(b.len(), numel),
            }
        }
    }
});
