//! What an input value looks like in JSON: one set of rules for JSONL
//! sources, uploads and inline job inputs.

use base64::Engine as _;
use serde_json::Value;
use sluice_core::Input;

use crate::{Fields, Kept, Record, Want};

/// The fields tried, in this order, for a record's value when no field is
/// configured.
pub(crate) const VALUE_FIELDS: [&str; 5] = ["value", "text", "base64", "tensor", "input"];

/// Parses one input value by its form ([`Want::Any`]): a string is text;
/// `{"text": ..}` is text; `{"base64": ..}` is bytes (an image); `{"tensor": ..}`
/// or any other array or object is a JSON tensor.
pub fn value_from_json(v: Value) -> Result<Input, String> {
    match v {
        Value::String(s) => Ok(Input::Text(s)),
        Value::Object(mut o) if o.len() == 1 && o.contains_key("text") => text(o.remove("text"), "text"),
        Value::Object(mut o) if o.len() == 1 && o.contains_key("base64") => bytes(o.remove("base64")),
        Value::Object(mut o) if o.len() == 1 && o.contains_key("tensor") => {
            Ok(Input::Json(o.remove("tensor").unwrap_or_default()))
        }
        Value::Null => Err("input is null".into()),
        other => Ok(Input::Json(other)),
    }
}

fn text(v: Option<Value>, field: &str) -> Result<Input, String> {
    match v {
        Some(Value::String(s)) => Ok(Input::Text(s)),
        Some(Value::Object(mut o)) if o.len() == 1 && o.contains_key("text") => text(o.remove("text"), field),
        Some(other) => Err(format!("'{field}' must be a string, got {}", kind_of(&other))),
        None => Err(format!("'{field}' is missing")),
    }
}

fn bytes(v: Option<Value>) -> Result<Input, String> {
    match v {
        Some(Value::String(s)) => base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map(Input::Bytes)
            .map_err(|e| format!("invalid base64: {e}")),
        _ => Err("'base64' must be a string".into()),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Reads `v`, found under `field` (`None`: the whole record), as `want` says.
fn interpret(v: Value, field: Option<&str>, want: Want) -> Result<Input, String> {
    let name = field.unwrap_or("value");
    match (want, field) {
        (Want::Json, Some("text" | "base64")) => Err(format!(
            "this model takes JSON tensors; give them as 'tensor' or 'input', not '{name}'"
        )),
        (Want::Json, _) => Ok(Input::Json(v)),
        (Want::Text, _) => text(Some(v), name),
        (Want::Bytes, Some("base64")) => bytes(Some(v)),
        (Want::Bytes, _) => match v {
            Value::Object(mut o) if o.len() == 1 && o.contains_key("base64") => bytes(o.remove("base64")),
            _ => Err("this model takes files (images): give a folder or a glob, or the bytes as 'base64'".into()),
        },
        (Want::Any, Some("text")) => text(Some(v), "text"),
        (Want::Any, Some("base64")) => bytes(Some(v)),
        (Want::Any, Some("tensor" | "input")) => Ok(Input::Json(v)),
        (Want::Any, _) => value_from_json(v),
    }
}

/// Reads one plain-text value (a line, a CSV cell, a text file) as `want`
/// says.
pub(crate) fn from_text(s: &str, want: Want) -> Result<Input, String> {
    match want {
        Want::Text | Want::Any => Ok(Input::Text(s.to_owned())),
        Want::Json => serde_json::from_str(s)
            .map(Input::Json)
            .map_err(|e| format!("tensor input is not JSON: {e}")),
        Want::Bytes => Err("this model takes files (images): give a folder or a glob".into()),
    }
}

/// The kept columns ([`Fields::keep`]) of a record: the named fields of
/// `object` in the named order, `null` where it lacks one (or is not an
/// object at all); `None` when none are asked for.
pub(crate) fn kept(object: Option<&serde_json::Map<String, Value>>, names: &[String]) -> Option<Kept> {
    (!names.is_empty()).then(|| {
        names
            .iter()
            .map(|k| (k.clone(), object.and_then(|o| o.get(k)).cloned().unwrap_or(Value::Null)))
            .collect()
    })
}

/// Parses one JSONL record (line `n` of its file) under the crate's rules;
/// a line that cannot be read is a record with an error, keyed by `n`.
/// When [`Fields::keep`] names fields, the record keeps copies of them
/// (the key and value fields included), `null` for those it lacks.
pub fn json_record(line: &str, n: u64, want: Want, fields: &Fields) -> Record {
    let failed = |message: String, keep: Option<Kept>| Record {
        key: n.to_string(),
        input: Err(message),
        keep,
    };
    let v: Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => return failed(format!("line {n} is not valid JSON: {e}"), kept(None, &fields.keep)),
    };
    let Value::Object(mut o) = v else {
        // Not an object: the line is the value itself.
        let input = if v.is_null() {
            Err(format!("line {n} is null"))
        } else {
            interpret(v, None, want).map_err(|e| format!("line {n}: {e}"))
        };
        return Record {
            key: n.to_string(),
            input,
            keep: kept(None, &fields.keep),
        };
    };
    // Copies first: the key and value fields are taken out of `o` below.
    let keep = kept(Some(&o), &fields.keep);
    let id = match &fields.id {
        Some(f) => o.remove(f.as_str()),
        None => o.remove("id").or_else(|| o.remove("key")),
    };
    let key = match id {
        Some(Value::String(s)) => s,
        Some(Value::Number(x)) => x.to_string(),
        Some(other) => {
            let name = fields.id.as_deref().unwrap_or("id");
            return failed(
                format!(
                    "line {n}: '{name}' must be a string or a number, got {}",
                    kind_of(&other)
                ),
                keep,
            );
        }
        None => n.to_string(),
    };
    let found = match &fields.value {
        Some(f) => o.remove(f.as_str()).map(|v| (f.as_str(), v)),
        None => VALUE_FIELDS.iter().find_map(|f| o.remove(*f).map(|v| (*f, v))),
    };
    let input = match found {
        Some((field, v)) => interpret(v, Some(field), want).map_err(|e| format!("line {n} (key '{key}'): {e}")),
        None => Err(match &fields.value {
            Some(f) => format!("line {n} has no '{f}' field"),
            None => format!(
                "line {n}: give the input as 'value', 'text', 'base64', 'tensor' or 'input' (found fields {:?})",
                o.keys().collect::<Vec<_>>()
            ),
        }),
    };
    Record { key, input, keep }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn rec(line: &str, want: Want) -> Record {
        json_record(line, 3, want, &Fields::default())
    }

    #[test]
    fn value_forms() {
        assert_eq!(value_from_json(json!("hi")), Ok(Input::Text("hi".into())));
        assert_eq!(value_from_json(json!({"text": "hi"})), Ok(Input::Text("hi".into())));
        assert_eq!(value_from_json(json!({"base64": "AAE="})), Ok(Input::Bytes(vec![0, 1])));
        assert!(value_from_json(json!({"base64": "!!"})).is_err());
        assert_eq!(
            value_from_json(json!({"tensor": [1, 2]})),
            Ok(Input::Json(json!([1, 2])))
        );
        assert!(value_from_json(Value::Null).is_err());
    }

    #[test]
    fn keys_come_from_id_or_key_else_the_line() {
        assert_eq!(rec(r#"{"id": 7, "text": "x"}"#, Want::Text).key, "7");
        assert_eq!(rec(r#"{"key": "a", "text": "x"}"#, Want::Any).key, "a");
        let r = rec(r#"{"text": "x"}"#, Want::Text);
        assert_eq!((r.key.as_str(), r.input), ("3", Ok(Input::Text("x".into()))));
        let bad = rec(r#"{"id": [1], "text": "x"}"#, Want::Text);
        assert_eq!(bad.key, "3");
        assert!(bad
            .input
            .expect_err("bad id")
            .contains("'id' must be a string or a number"));
    }

    #[test]
    fn the_first_value_field_wins_and_other_fields_are_kept_out() {
        let r = rec(r#"{"id": "a", "lang": "en", "text": "hello"}"#, Want::Any);
        assert_eq!(r.input, Ok(Input::Text("hello".into())));
        let r = rec(r#"{"id": "a", "input": [[1, 2]]}"#, Want::Json);
        assert_eq!(r.input, Ok(Input::Json(json!([[1, 2]]))));
        let r = rec(r#"{"id": "a", "value": {"base64": "AAE="}}"#, Want::Any);
        assert_eq!(r.input, Ok(Input::Bytes(vec![0, 1])));
        let r = rec(r#"{"id": "a", "other": 1}"#, Want::Any);
        assert!(r.input.expect_err("no value").contains("found fields [\"other\"]"));
    }

    #[test]
    fn values_must_fit_what_the_model_takes() {
        let e = rec(r#"{"text": 5}"#, Want::Text).input.expect_err("number text");
        assert!(e.contains("'text' must be a string, got a number"), "{e}");
        assert!(rec(r#"{"text": "x"}"#, Want::Json).input.is_err());
        assert!(rec(r#"{"text": "x"}"#, Want::Bytes).input.is_err());
        assert_eq!(
            rec(r#"{"base64": "AAE="}"#, Want::Bytes).input,
            Ok(Input::Bytes(vec![0, 1]))
        );
        // A line that is not an object is the value itself.
        assert_eq!(rec("[1, 2]", Want::Json).input, Ok(Input::Json(json!([1, 2]))));
        assert_eq!(rec(r#""hello""#, Want::Text).input, Ok(Input::Text("hello".into())));
        assert!(rec("null", Want::Any).input.is_err());
    }

    #[test]
    fn configured_fields() {
        let fields = Fields {
            id: Some("doc".into()),
            value: Some("body".into()),
            keep: Vec::new(),
        };
        let r = json_record(r#"{"doc": "d1", "id": "x", "body": "hi"}"#, 1, Want::Text, &fields);
        assert_eq!((r.key.as_str(), r.input), ("d1", Ok(Input::Text("hi".into()))));
        let r = json_record(r#"{"doc": "d1", "text": "hi"}"#, 4, Want::Text, &fields);
        assert_eq!(r.input, Err("line 4 has no 'body' field".into()));
    }

    #[test]
    fn kept_fields_are_copied_before_the_key_and_value_are_taken() {
        let fields = Fields {
            keep: vec!["lang".into(), "id".into(), "text".into(), "meta".into(), "gone".into()],
            ..Fields::default()
        };
        let r = json_record(
            r#"{"id": 5, "text": "hi", "lang": "en", "meta": {"a": [1]}}"#,
            2,
            Want::Text,
            &fields,
        );
        assert_eq!((r.key.as_str(), r.input), ("5", Ok(Input::Text("hi".into()))));
        let k = r.keep.expect("kept");
        assert_eq!(k.len(), 5);
        assert_eq!(k["lang"], json!("en"));
        assert_eq!(k["id"], json!(5));
        assert_eq!(k["text"], json!("hi"));
        assert_eq!(k["meta"], json!({"a": [1]}));
        assert_eq!(k["gone"], Value::Null);
        // Lines that fail, and lines that are not objects, keep nulls.
        let nulls = json!({"lang": null, "id": null, "text": null, "meta": null, "gone": null});
        for line in ["nope", r#""just text""#, r#"{"id": [1], "lang": "de"}"#] {
            let keep = json_record(line, 1, Want::Text, &fields).keep.map(Value::Object);
            if line.starts_with('{') {
                assert_eq!(keep.as_ref().map(|k| k["lang"].clone()), Some(json!("de")), "{line}");
            } else {
                assert_eq!(keep.as_ref(), Some(&nulls), "{line}");
            }
        }
        // Nothing asked, nothing kept.
        assert_eq!(rec(r#"{"text": "x", "lang": "en"}"#, Want::Text).keep, None);
    }

    #[test]
    fn messages_name_the_line() {
        let r = json_record("nope", 12, Want::Any, &Fields::default());
        assert_eq!(r.key, "12");
        assert!(r.input.expect_err("not JSON").starts_with("line 12 is not valid JSON"));
    }
}
