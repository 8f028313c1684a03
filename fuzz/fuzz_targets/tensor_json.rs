//! The tensor JSON parser of `sluice-core`: `Tensor::from_json` (nested
//! arrays, `{shape, data}`, `{shape, b64}`), used per item by the tensor
//! processing chain (`/v1` infer, jobs), and `Tensor::from_json_data` (the v2
//! `data` field) with a shape taken from the first bytes. Accepted tensors
//! are split and stacked back, as the engine does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_core::tensor::ShapeLimits;
use sluice_core::{DType, Tensor};

const DTYPES: [DType; 7] = [
    DType::F32,
    DType::F64,
    DType::I64,
    DType::I32,
    DType::U8,
    DType::I8,
    DType::Bool,
];

fn check(t: &Tensor) {
    let numel = ShapeLimits::default().check(&t.shape).expect("within the limits");
    assert_eq!(t.numel(), numel);
    let rows = t.split_first();
    if !rows.is_empty() {
        let refs: Vec<&Tensor> = rows.iter().collect();
        let (stacked, padded) = Tensor::stack("x", &refs, 0.0).expect("rows of one tensor stack");
        assert_eq!(padded, 0);
        assert_eq!(&stacked, t);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let dtype = DTYPES[usize::from(sel) % DTYPES.len()];
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(rest) else {
        return;
    };
    if let Ok(t) = Tensor::from_json(&value, dtype) {
        assert_eq!(t.dtype(), dtype);
        check(&t);
    }
    // The v2 `data` field with a flat shape of as many elements as given.
    if let Some(n) = value.as_array().map(Vec::len) {
        if let Ok(t) = Tensor::from_json_data(vec![n], &value, dtype) {
            check(&t);
        }
    }
});
