//! `model.toml` parsing and validation: `ModelSpec::parse`, what
//! `ModelSpec::load` and every model folder go through. A spec it accepts
//! must pass `validate` again (the check CLI overrides go through too).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_core::spec::ModelSpec;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(spec) = ModelSpec::parse(text) {
        spec.validate().expect("a parsed spec is valid");
        let _ = spec.max_delay();
    }
});
