//! Results as Parquet: one row per input, typed columns.
//!
//! The columns, in this order:
//!
//! | column | type | |
//! |---|---|---|
//! | `id` | `utf8` | the input's key |
//! | each kept column | `utf8`, `int64`, `float64` or `bool` | the type of the column's first non-null value; JSON text for arrays and objects |
//! | the output | see below | null for a failed input |
//! | `error_code` | `utf8` | null for an input with an output |
//! | `error_message` | `utf8` | |
//!
//! The output column is named after the kind of output and typed by it:
//! `embedding` is `list<float32>`; `detections` is
//! `list<struct<class_id: int64, label: utf8, score: float32, bbox: list<float32>>>`
//! (`bbox` is `[x_min, y_min, x_max, y_max]` in pixels); `classes` is
//! `list<struct<class_id: int64, label: utf8, score: float32>>`; `tensors`
//! and `files`, whose shape is open, are the output as JSON text (`utf8`).
//! The kind is the first output's; rows are buffered until it is known.
//!
//! Rows are written in record batches of [`BATCH_ROWS`] into row groups of
//! at most [`ROW_GROUP_ROWS`] rows, so memory stays bounded for any number
//! of rows.

use std::io::Write;
use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Float32Builder, Float64Builder, Int64Builder, ListBuilder, StringBuilder, StructBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Fields};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde_json::Value;
use sluice_core::Output;

use crate::sink::{Outcome, ResultRow};
use crate::Kept;

/// Rows per record batch handed to the Parquet writer.
pub const BATCH_ROWS: usize = 1024;

/// Rows per row group at most.
pub const ROW_GROUP_ROWS: usize = 8192;

/// Rows buffered while the output's kind is still unknown (every row so far
/// failed); past this, the output is written as JSON text.
const UNKNOWN_KIND_ROWS: usize = 4096;

/// What the output column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutKind {
    Embedding,
    Detections,
    Classes,
    /// JSON text, under this column name.
    Json(&'static str),
}

impl OutKind {
    fn of(output: &Output) -> OutKind {
        match output {
            Output::Embedding(_) => OutKind::Embedding,
            Output::Detections(_) => OutKind::Detections,
            Output::Classes(_) => OutKind::Classes,
            Output::Tensors(_) => OutKind::Json("tensors"),
            Output::Files(_) => OutKind::Json("files"),
        }
    }

    fn column(self) -> &'static str {
        match self {
            OutKind::Embedding => "embedding",
            OutKind::Detections => "detections",
            OutKind::Classes => "classes",
            OutKind::Json(name) => name,
        }
    }
}

/// The type of a kept column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeptKind {
    Str,
    Int,
    Float,
    Bool,
}

impl KeptKind {
    fn of(v: &Value) -> Option<KeptKind> {
        match v {
            Value::Null => None,
            Value::Bool(_) => Some(KeptKind::Bool),
            Value::Number(n) if n.is_i64() => Some(KeptKind::Int),
            Value::Number(_) => Some(KeptKind::Float),
            _ => Some(KeptKind::Str),
        }
    }
}

enum KeptBuilder {
    Str(StringBuilder),
    Int(Int64Builder),
    Float(Float64Builder),
    Bool(BooleanBuilder),
}

impl KeptBuilder {
    fn new(kind: KeptKind) -> KeptBuilder {
        match kind {
            KeptKind::Str => KeptBuilder::Str(StringBuilder::new()),
            KeptKind::Int => KeptBuilder::Int(Int64Builder::new()),
            KeptKind::Float => KeptBuilder::Float(Float64Builder::new()),
            KeptKind::Bool => KeptBuilder::Bool(BooleanBuilder::new()),
        }
    }

    /// Appends `v`; a value of another type than the column's is null in a
    /// typed column, and its JSON text in a text column.
    fn append(&mut self, v: Option<&Value>) {
        match (self, v) {
            (KeptBuilder::Str(b), Some(Value::String(s))) => b.append_value(s),
            (KeptBuilder::Str(b), Some(Value::Null) | None) => b.append_null(),
            (KeptBuilder::Str(b), Some(other)) => b.append_value(other.to_string()),
            (KeptBuilder::Int(b), v) => b.append_option(v.and_then(Value::as_i64)),
            (KeptBuilder::Float(b), v) => b.append_option(v.and_then(Value::as_f64)),
            (KeptBuilder::Bool(b), v) => b.append_option(v.and_then(Value::as_bool)),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            KeptBuilder::Str(b) => Arc::new(b.finish()),
            KeptBuilder::Int(b) => Arc::new(b.finish()),
            KeptBuilder::Float(b) => Arc::new(b.finish()),
            KeptBuilder::Bool(b) => Arc::new(b.finish()),
        }
    }
}

fn detection_fields(with_box: bool) -> Fields {
    let mut f = vec![
        Field::new("class_id", DataType::Int64, false),
        Field::new("label", DataType::Utf8, false),
        Field::new("score", DataType::Float32, false),
    ];
    if with_box {
        f.push(Field::new(
            "bbox",
            DataType::List(Arc::new(Field::new_list_field(DataType::Float32, true))),
            false,
        ));
    }
    f.into()
}

fn struct_list(with_box: bool) -> ListBuilder<StructBuilder> {
    let mut builders: Vec<Box<dyn arrow_array::builder::ArrayBuilder>> = vec![
        Box::new(Int64Builder::new()),
        Box::new(StringBuilder::new()),
        Box::new(Float32Builder::new()),
    ];
    if with_box {
        builders.push(Box::new(ListBuilder::new(Float32Builder::new())));
    }
    let fields = detection_fields(with_box);
    let item = Field::new("item", DataType::Struct(fields.clone()), true);
    ListBuilder::new(StructBuilder::new(fields, builders)).with_field(item)
}

enum OutBuilder {
    Embedding(ListBuilder<Float32Builder>),
    Detections(ListBuilder<StructBuilder>),
    Classes(ListBuilder<StructBuilder>),
    Json(StringBuilder),
}

/// Why a row cannot be added to the table.
fn mismatch(want: OutKind, got: &Output) -> String {
    format!(
        "an output of kind '{}' in a table whose output column is '{}'",
        OutKind::of(got).column(),
        want.column()
    )
}

impl OutBuilder {
    fn new(kind: OutKind) -> OutBuilder {
        match kind {
            OutKind::Embedding => OutBuilder::Embedding(ListBuilder::new(Float32Builder::new())),
            OutKind::Detections => OutBuilder::Detections(struct_list(true)),
            OutKind::Classes => OutBuilder::Classes(struct_list(false)),
            OutKind::Json(_) => OutBuilder::Json(StringBuilder::new()),
        }
    }

    fn append_null(&mut self) {
        match self {
            OutBuilder::Embedding(b) => b.append_null(),
            OutBuilder::Detections(b) | OutBuilder::Classes(b) => b.append_null(),
            OutBuilder::Json(b) => b.append_null(),
        }
    }

    /// Appends one output; `json` is its text, written as is in a JSON column.
    fn append(&mut self, kind: OutKind, output: &Output, json: &str) -> Result<(), String> {
        match (self, output) {
            (OutBuilder::Embedding(b), Output::Embedding(v)) => {
                b.values().append_slice(v);
                b.append(true);
            }
            (OutBuilder::Detections(b), Output::Detections(dets)) => {
                let s = b.values();
                for d in dets {
                    append_label(s, d.class_id, &d.label, d.score);
                    if let Some(bbox) = s.field_builder::<ListBuilder<Float32Builder>>(3) {
                        bbox.values().append_slice(&d.bbox);
                        bbox.append(true);
                    }
                    s.append(true);
                }
                b.append(true);
            }
            (OutBuilder::Classes(b), Output::Classes(classes)) => {
                let s = b.values();
                for c in classes {
                    append_label(s, c.class_id, &c.label, c.score);
                    s.append(true);
                }
                b.append(true);
            }
            (OutBuilder::Json(b), Output::Tensors(_) | Output::Files(_)) => {
                // The output's own JSON is `{"tensors": ..}`: the column holds the inner value.
                let inner = serde_json::from_str::<serde_json::Map<String, Value>>(json)
                    .ok()
                    .and_then(|m| m.into_iter().next().map(|(_, v)| v.to_string()));
                b.append_value(inner.unwrap_or_else(|| json.to_owned()));
            }
            (_, other) => return Err(mismatch(kind, other)),
        }
        Ok(())
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            OutBuilder::Embedding(b) => Arc::new(b.finish()),
            OutBuilder::Detections(b) | OutBuilder::Classes(b) => Arc::new(b.finish()),
            OutBuilder::Json(b) => Arc::new(b.finish()),
        }
    }
}

fn append_label(s: &mut StructBuilder, class_id: usize, label: &str, score: f32) {
    if let Some(b) = s.field_builder::<Int64Builder>(0) {
        b.append_value(i64::try_from(class_id).unwrap_or(i64::MAX));
    }
    if let Some(b) = s.field_builder::<StringBuilder>(1) {
        b.append_value(label);
    }
    if let Some(b) = s.field_builder::<Float32Builder>(2) {
        b.append_value(score);
    }
}

/// A row held until the table's columns are known.
struct Pending {
    key: String,
    outcome: PendingOutcome,
    kept: Option<Kept>,
}

enum PendingOutcome {
    Ok(Output, String),
    Failed(String, String),
}

/// The builders of one record batch.
struct Columns {
    kind: OutKind,
    kept_names: Vec<String>,
    id: StringBuilder,
    kept: Vec<KeptBuilder>,
    output: OutBuilder,
    code: StringBuilder,
    message: StringBuilder,
    rows: usize,
}

impl Columns {
    fn add(
        &mut self,
        key: &str,
        outcome: Result<(&Output, &str), (&str, &str)>,
        kept: Option<&Kept>,
    ) -> Result<(), String> {
        match outcome {
            Ok((output, json)) => {
                self.output.append(self.kind, output, json)?;
                self.code.append_null();
                self.message.append_null();
            }
            Err((code, message)) => {
                self.output.append_null();
                self.code.append_value(code);
                self.message.append_value(message);
            }
        }
        self.id.append_value(key);
        for (name, b) in self.kept_names.iter().zip(&mut self.kept) {
            b.append(kept.and_then(|k| k.get(name)));
        }
        self.rows += 1;
        Ok(())
    }

    fn batch(&mut self) -> Result<RecordBatch, String> {
        let mut cols: Vec<(String, ArrayRef)> = vec![("id".into(), Arc::new(self.id.finish()))];
        for (name, b) in self.kept_names.iter().zip(&mut self.kept) {
            cols.push((name.clone(), b.finish()));
        }
        cols.push((self.kind.column().into(), self.output.finish()));
        cols.push(("error_code".into(), Arc::new(self.code.finish())));
        cols.push(("error_message".into(), Arc::new(self.message.finish())));
        self.rows = 0;
        RecordBatch::try_from_iter(cols).map_err(|e| e.to_string())
    }
}

/// Writes result rows as one Parquet file on `W` (see the module docs).
pub struct ParquetTable<W: Write + Send> {
    out: Option<W>,
    writer: Option<ArrowWriter<W>>,
    columns: Option<Columns>,
    pending: Vec<Pending>,
    rows: u64,
}

impl<W: Write + Send> ParquetTable<W> {
    /// A table written to `out` once its first batch is full.
    pub fn new(out: W) -> ParquetTable<W> {
        ParquetTable {
            out: Some(out),
            writer: None,
            columns: None,
            pending: Vec::new(),
            rows: 0,
        }
    }

    /// Rows added so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Bytes written so far, plus an estimate of what is buffered.
    pub fn size_estimate(&self) -> u64 {
        self.writer
            .as_ref()
            .map_or(0, |w| (w.bytes_written() + w.in_progress_size()) as u64)
    }

    /// Adds one row; an output JSON that is not a Sluice output, or an output
    /// of another kind than the table's, is an error.
    pub fn add(&mut self, row: &ResultRow<'_>) -> Result<(), String> {
        let outcome = match row.outcome {
            Outcome::Ok(json) => {
                let output: Output =
                    serde_json::from_str(json).map_err(|e| format!("an output that is not a Sluice output: {e}"))?;
                PendingOutcome::Ok(output, json.to_owned())
            }
            Outcome::Failed { code, message } => PendingOutcome::Failed(code.to_owned(), message.to_owned()),
        };
        self.rows += 1;
        if self.columns.is_none() {
            let known = match &outcome {
                PendingOutcome::Ok(output, _) => Some(OutKind::of(output)),
                PendingOutcome::Failed(..) if self.pending.len() + 1 >= UNKNOWN_KIND_ROWS => {
                    Some(OutKind::Json("output"))
                }
                PendingOutcome::Failed(..) => None,
            };
            self.pending.push(Pending {
                key: row.key.to_owned(),
                outcome,
                kept: row.kept.cloned(),
            });
            if let Some(kind) = known {
                self.start(kind)?;
            }
            return Ok(());
        }
        let cols = self.columns.as_mut().ok_or("no columns")?;
        let o = match &outcome {
            PendingOutcome::Ok(output, json) => Ok((output, json.as_str())),
            PendingOutcome::Failed(c, m) => Err((c.as_str(), m.as_str())),
        };
        cols.add(row.key, o, row.kept)?;
        if cols.rows >= BATCH_ROWS {
            self.flush_batch()?;
        }
        Ok(())
    }

    /// Fixes the columns (the output's kind, the kept columns' types from
    /// the buffered rows) and adds the buffered rows.
    fn start(&mut self, kind: OutKind) -> Result<(), String> {
        let kept_names: Vec<String> = self
            .pending
            .iter()
            .find_map(|p| p.kept.as_ref())
            .map(|k| k.keys().cloned().collect())
            .unwrap_or_default();
        let kept = kept_names
            .iter()
            .map(|name| {
                let kind = self
                    .pending
                    .iter()
                    .filter_map(|p| p.kept.as_ref().and_then(|k| k.get(name)))
                    .find_map(KeptKind::of)
                    .unwrap_or(KeptKind::Str);
                KeptBuilder::new(kind)
            })
            .collect();
        let mut cols = Columns {
            kind,
            kept_names,
            id: StringBuilder::new(),
            kept,
            output: OutBuilder::new(kind),
            code: StringBuilder::new(),
            message: StringBuilder::new(),
            rows: 0,
        };
        for p in std::mem::take(&mut self.pending) {
            let o = match &p.outcome {
                PendingOutcome::Ok(output, json) => Ok((output, json.as_str())),
                PendingOutcome::Failed(c, m) => Err((c.as_str(), m.as_str())),
            };
            cols.add(&p.key, o, p.kept.as_ref())?;
        }
        self.columns = Some(cols);
        Ok(())
    }

    fn flush_batch(&mut self) -> Result<(), String> {
        let Some(cols) = self.columns.as_mut() else {
            return Ok(());
        };
        if cols.rows == 0 && self.writer.is_some() {
            return Ok(());
        }
        let batch = cols.batch()?;
        if self.writer.is_none() {
            let out = self.out.take().ok_or("the table is closed")?;
            let props = WriterProperties::builder()
                .set_compression(Compression::SNAPPY)
                .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
                .build();
            self.writer = Some(ArrowWriter::try_new(out, batch.schema(), Some(props)).map_err(|e| e.to_string())?);
        }
        let writer = self.writer.as_mut().ok_or("no writer")?;
        writer.write(&batch).map_err(|e| e.to_string())
    }

    /// Writes what is buffered and the footer; hands back the writer.
    pub fn finish(mut self) -> Result<W, String> {
        if self.columns.is_none() {
            self.start(OutKind::Json("output"))?;
        }
        self.flush_batch()?;
        let writer = self.writer.take().ok_or("no writer")?;
        writer.into_inner().map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::types::Float32Type;
    use arrow_array::Array;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    fn read(bytes: Vec<u8>) -> Vec<RecordBatch> {
        ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
            .expect("parquet")
            .build()
            .expect("reader")
            .collect::<Result<Vec<_>, _>>()
            .expect("batches")
    }

    #[test]
    fn embeddings_are_lists_of_float32_and_failures_have_error_columns() {
        let mut t = ParquetTable::new(Vec::new());
        let mut kept = Kept::new();
        kept.insert("lang".into(), Value::from("en"));
        kept.insert("n".into(), Value::from(7));
        // A failure first: held until the first output says the kind.
        t.add(&ResultRow {
            key: "bad",
            outcome: Outcome::Failed {
                code: "invalid_input",
                message: "empty text",
            },
            kept: Some(&kept),
        })
        .expect("add");
        for i in 0..2500 {
            let json = serde_json::to_string(&Output::Embedding(vec![i as f32, 0.5, -1.0])).expect("json");
            t.add(&ResultRow {
                key: &format!("k{i}"),
                outcome: Outcome::Ok(&json),
                kept: Some(&kept),
            })
            .expect("add");
        }
        let batches = read(t.finish().expect("finish"));
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        assert_eq!(rows, 2501);
        let schema = batches[0].schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["id", "lang", "n", "embedding", "error_code", "error_message"]);
        assert_eq!(
            schema.field(3).data_type(),
            &DataType::List(Arc::new(Field::new_list_field(DataType::Float32, true)))
        );
        assert_eq!(schema.field(2).data_type(), &DataType::Int64);
        let b = &batches[0];
        let ids = b.column(0).as_string::<i32>();
        assert_eq!(ids.value(0), "bad");
        assert_eq!(ids.value(1), "k0");
        let emb = b.column(3).as_list::<i32>();
        assert!(emb.is_null(0));
        let second = emb.value(2);
        assert_eq!(second.as_primitive::<Float32Type>().values(), &[1.0, 0.5, -1.0]);
        assert_eq!(b.column(4).as_string::<i32>().value(0), "invalid_input");
        assert!(b.column(4).is_null(1));
        assert_eq!(b.column(1).as_string::<i32>().value(5), "en");
    }

    #[test]
    fn detections_are_lists_of_structs() {
        let mut t = ParquetTable::new(Vec::new());
        let dets = Output::Detections(vec![sluice_core::Detection {
            class_id: 2,
            label: "car".into(),
            score: 0.75,
            bbox: [1.0, 2.0, 30.0, 40.0],
        }]);
        let json = serde_json::to_string(&dets).expect("json");
        t.add(&ResultRow {
            key: "a.jpg",
            outcome: Outcome::Ok(&json),
            kept: None,
        })
        .expect("add");
        let other = serde_json::to_string(&Output::Embedding(vec![1.0])).expect("json");
        let err = t
            .add(&ResultRow {
                key: "b",
                outcome: Outcome::Ok(&other),
                kept: None,
            })
            .expect_err("another kind");
        assert!(err.contains("'embedding'") && err.contains("'detections'"), "{err}");
        let batches = read(t.finish().expect("finish"));
        let b = &batches[0];
        assert_eq!(b.num_rows(), 1);
        let list = b.column_by_name("detections").expect("column").as_list::<i32>();
        let first = list.value(0);
        let s = first.as_struct();
        assert_eq!(
            s.column_by_name("label").expect("label").as_string::<i32>().value(0),
            "car"
        );
        let bbox = s.column_by_name("bbox").expect("bbox").as_list::<i32>().value(0);
        assert_eq!(bbox.as_primitive::<Float32Type>().values(), &[1.0, 2.0, 30.0, 40.0]);
    }
}
