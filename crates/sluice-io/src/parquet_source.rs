//! Parquet sources: one record per row, read a row group at a time in
//! batches of [`BATCH_ROWS`], with only the key, value and kept columns
//! decoded. Local files go through the blocking reader; objects go through
//! the async reader on the object-store I/O thread (see `object.rs`), their
//! records waiting in a bounded channel.

use std::fs::File;
use std::ops::Range;
use std::sync::Arc;

use arrow_array::cast::AsArray as _;
use arrow_array::types::{
    Date32Type, Date64Type, Decimal128Type, Decimal256Type, Decimal32Type, Decimal64Type, DurationMicrosecondType,
    DurationMillisecondType, DurationNanosecondType, DurationSecondType, Float16Type, Float32Type, Float64Type,
    Int16Type, Int32Type, Int64Type, Int8Type, Time32MillisecondType, Time32SecondType, Time64MicrosecondType,
    Time64NanosecondType, TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType, UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use arrow_array::{Array, ArrowPrimitiveType, PrimitiveArray, RecordBatch};
use arrow_schema::{DataType, Schema, TimeUnit};
use base64::Engine as _;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt as _, StreamExt as _};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt as _};
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder,
};
use parquet::arrow::async_reader::{AsyncFileReader, ParquetRecordBatchStreamBuilder};
use parquet::arrow::ProjectionMask;
use parquet::errors::ParquetError;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use serde_json::{Map, Value};
use sluice_core::Input;
use tokio::sync::mpsc;

use crate::local::Records;
use crate::object::{on_io_thread, said, spawn_io};
use crate::value::{from_text, VALUE_FIELDS};
use crate::{Fields, Kept, Record, SourceError, SourceOptions, Want};

/// Rows decoded at a time: a batch of this many rows of the read columns is
/// what a Parquet source holds in memory beside its row group's pages.
pub(crate) const BATCH_ROWS: usize = 1024;

/// Records waiting between the object-store I/O thread and the consumer.
const CHANNEL: usize = 64;

/// How the value column becomes an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ValueKind {
    /// A string column read as text.
    Text,
    /// A string column holding JSON (a tensor model).
    JsonText,
    /// A string column named `base64` holding encoded bytes.
    Base64,
    /// A binary column.
    Bytes,
    /// A list column of numbers, read as a JSON tensor.
    Tensor,
}

/// What kind of values a column holds, for choosing how to read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holds {
    Text,
    Bytes,
    Numbers,
}

/// Which columns of a file are read and how: decided once from its schema.
#[derive(Debug, Clone)]
struct Plan {
    /// The file's top-level columns that are decoded, in schema order.
    roots: Vec<usize>,
    /// The key column's position in a decoded batch.
    id: Option<usize>,
    /// The value column's position in a decoded batch.
    value: usize,
    value_name: String,
    kind: ValueKind,
    /// The kept columns and their positions in a decoded batch; `None` when
    /// none are asked for.
    keep: Option<Vec<(String, usize)>>,
}

impl Plan {
    /// Resolves the key, value and kept columns of `schema` under the crate's
    /// rules; the message names the missing or unusable column.
    fn new(schema: &Schema, fields: &Fields, want: Want) -> Result<Plan, String> {
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        let find = |name: &str| names.iter().position(|n| *n == name);
        let value_name = match &fields.value {
            Some(f) => {
                if find(f).is_none() {
                    return Err(format!("no '{f}' column (columns: {names:?})"));
                }
                f.clone()
            }
            None => match VALUE_FIELDS.iter().find(|f| find(f).is_some()) {
                Some(f) => (*f).to_owned(),
                None => {
                    return Err(format!(
                        "no value column: give the input as 'value', 'text', 'base64', 'tensor' or 'input' \
                         (columns: {names:?})"
                    ))
                }
            },
        };
        let value_root = find(&value_name).unwrap_or_default();
        let kind = value_kind(schema.field(value_root).data_type(), &value_name, want)?;
        let id_root = match &fields.id {
            Some(f) => Some(find(f).ok_or_else(|| format!("no '{f}' key column (columns: {names:?})"))?),
            None => find("id").or_else(|| find("key")),
        };
        if let Some(c) = id_root {
            let dt = schema.field(c).data_type();
            if !matches!(holds(dt), Some(Holds::Text)) && !base(dt).is_integer() {
                return Err(format!(
                    "key column '{}' must hold strings or integers, not {dt}",
                    names[c]
                ));
            }
        }
        let keep_roots = fields
            .keep
            .iter()
            .map(|k| {
                find(k)
                    .map(|c| (k.clone(), c))
                    .ok_or_else(|| format!("no '{k}' column to keep (columns: {names:?})"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut roots: Vec<usize> = keep_roots
            .iter()
            .map(|(_, c)| *c)
            .chain([value_root])
            .chain(id_root)
            .collect();
        roots.sort_unstable();
        roots.dedup();
        // A decoded batch holds the projected columns in schema order.
        let pos = |root: usize| roots.binary_search(&root).unwrap_or_default();
        let id = id_root.map(pos);
        let value = pos(value_root);
        let keep = (!fields.keep.is_empty()).then(|| keep_roots.iter().map(|(k, c)| (k.clone(), pos(*c))).collect());
        Ok(Plan {
            roots,
            id,
            value,
            value_name,
            kind,
            keep,
        })
    }

    /// The record of row `i` of `batch`, row `n` of the file.
    fn record(&self, batch: &RecordBatch, i: usize, n: u64) -> Record {
        let column = |p: usize| batch.columns().get(p).map(|a| a.as_ref());
        let key = self
            .id
            .and_then(column)
            .and_then(|a| match json_at(a, i, false) {
                Value::String(s) => Some(s),
                Value::Number(x) => Some(x.to_string()),
                _ => None,
            })
            .unwrap_or_else(|| n.to_string());
        let input = match column(self.value) {
            Some(a) => self.input_at(a, i, n, &key),
            None => Err(format!("row {n} has no '{}' value", self.value_name)),
        };
        let keep = self.keep.as_ref().map(|cols| {
            cols.iter()
                .map(|(name, p)| (name.clone(), column(*p).map_or(Value::Null, |a| json_at(a, i, true))))
                .collect::<Kept>()
        });
        Record { key, input, keep }
    }

    fn input_at(&self, a: &dyn Array, i: usize, n: u64, key: &str) -> Result<Input, String> {
        let name = &self.value_name;
        let (values, j) = resolve(a, i);
        if a.is_null(i) || values.is_null(j) {
            return Err(format!("row {n}: '{name}' is null"));
        }
        let not_text = || format!("row {n} (key '{key}'): '{name}' is not text");
        match self.kind {
            ValueKind::Text => str_at(values, j)
                .map(|s| Input::Text(s.to_owned()))
                .ok_or_else(not_text),
            ValueKind::JsonText => str_at(values, j)
                .ok_or_else(not_text)
                .and_then(|s| from_text(s, Want::Json).map_err(|e| format!("row {n} (key '{key}'): {e}"))),
            ValueKind::Base64 => str_at(values, j).ok_or_else(not_text).and_then(|s| {
                base64::engine::general_purpose::STANDARD
                    .decode(s.trim())
                    .map(Input::Bytes)
                    .map_err(|e| format!("row {n} (key '{key}'): invalid base64: {e}"))
            }),
            ValueKind::Bytes => bytes_at(values, j)
                .map(|b| Input::Bytes(b.to_vec()))
                .ok_or_else(|| format!("row {n} (key '{key}'): '{name}' is not bytes")),
            ValueKind::Tensor => Ok(Input::Json(json_at(values, j, false))),
        }
    }
}

/// The type a dictionary column's values have (other types as they are).
fn base(dt: &DataType) -> &DataType {
    match dt {
        DataType::Dictionary(_, values) => base(values),
        other => other,
    }
}

/// What a column of type `dt` can give as an input, if anything.
fn holds(dt: &DataType) -> Option<Holds> {
    match base(dt) {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Some(Holds::Text),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView | DataType::FixedSizeBinary(_) => {
            Some(Holds::Bytes)
        }
        dt if numeric_list(dt) => Some(Holds::Numbers),
        _ => None,
    }
}

/// Whether `dt` is a list (of lists ...) of integers or floats.
fn numeric_list(dt: &DataType) -> bool {
    match dt {
        DataType::List(f)
        | DataType::LargeList(f)
        | DataType::FixedSizeList(f, _)
        | DataType::ListView(f)
        | DataType::LargeListView(f) => {
            let inner = f.data_type();
            inner.is_integer() || inner.is_floating() || numeric_list(inner)
        }
        _ => false,
    }
}

/// How a value column of type `dt`, named `name`, is read for `want`.
fn value_kind(dt: &DataType, name: &str, want: Want) -> Result<ValueKind, String> {
    let Some(held) = holds(dt) else {
        return Err(format!(
            "column '{name}' is {dt}, which is not an input: give text (a string column), \
             bytes (a binary column) or a tensor (a list of numbers)"
        ));
    };
    let takes = match want {
        Want::Text => "text",
        Want::Bytes => "files (images)",
        Want::Json => "JSON tensors",
        Want::Any => "any input",
    };
    match (held, want) {
        (Holds::Text, Want::Text) => Ok(ValueKind::Text),
        (Holds::Text, Want::Json) => Ok(ValueKind::JsonText),
        (Holds::Text, Want::Bytes | Want::Any) if name == "base64" => Ok(ValueKind::Base64),
        (Holds::Text, Want::Any) => Ok(ValueKind::Text),
        (Holds::Text, _) => Err(format!(
            "column '{name}' holds text, and this model takes {takes}: give a binary column, \
             or base64 text in a 'base64' column"
        )),
        (Holds::Bytes, Want::Bytes | Want::Any) => Ok(ValueKind::Bytes),
        (Holds::Bytes, _) => Err(format!("column '{name}' holds bytes, and this model takes {takes}")),
        (Holds::Numbers, Want::Json | Want::Any) => Ok(ValueKind::Tensor),
        (Holds::Numbers, _) => Err(format!(
            "column '{name}' holds lists of numbers (tensors), and this model takes {takes}"
        )),
    }
}

/// Row `i` of a dictionary column: the array that holds its value and the
/// value's index in it.
fn dictionary_entry(a: &dyn Array, i: usize) -> Option<(&dyn Array, usize)> {
    let d = a.as_any_dictionary_opt()?;
    let values = d.values().as_ref();
    let k = json_at(d.keys(), i, false)
        .as_u64()
        .and_then(|k| usize::try_from(k).ok())?;
    (k < values.len()).then_some((values, k))
}

/// Row `i` of `a`, looked up in its dictionary when it is one.
fn resolve(a: &dyn Array, i: usize) -> (&dyn Array, usize) {
    dictionary_entry(a, i).unwrap_or((a, i))
}

/// Value `i` of a string column.
fn str_at(a: &dyn Array, i: usize) -> Option<&str> {
    match a.data_type() {
        DataType::Utf8 => a.as_string_opt::<i32>().map(|s| s.value(i)),
        DataType::LargeUtf8 => a.as_string_opt::<i64>().map(|s| s.value(i)),
        DataType::Utf8View => a.as_string_view_opt().map(|s| s.value(i)),
        _ => None,
    }
}

/// Value `i` of a binary column.
fn bytes_at(a: &dyn Array, i: usize) -> Option<&[u8]> {
    match a.data_type() {
        DataType::Binary => a.as_binary_opt::<i32>().map(|b| b.value(i)),
        DataType::LargeBinary => a.as_binary_opt::<i64>().map(|b| b.value(i)),
        DataType::BinaryView => a.as_binary_view_opt().map(|b| b.value(i)),
        DataType::FixedSizeBinary(_) => a.as_fixed_size_binary_opt().map(|b| b.value(i)),
        _ => None,
    }
}

fn primitive<T: ArrowPrimitiveType>(a: &dyn Array) -> Option<&PrimitiveArray<T>> {
    a.as_primitive_opt::<T>()
}

/// A float as JSON: a number, or its text when it has no JSON form (NaN,
/// infinities).
fn float(x: f64) -> Value {
    serde_json::Number::from_f64(x).map_or_else(|| Value::String(x.to_string()), Value::Number)
}

/// A 32-bit float as JSON; `short` writes the shortest decimal that reads
/// back as the same `f32` (`0.1`, not `0.10000000149011612`).
fn float32(x: f32, short: bool) -> Value {
    if short {
        float(x.to_string().parse::<f64>().unwrap_or(f64::from(x)))
    } else {
        float(f64::from(x))
    }
}

/// Value `i` of any column as JSON: strings, numbers, booleans and null as
/// themselves, lists as arrays, structs and maps as objects, bytes as
/// base64, dates and times in ISO 8601, decimals as strings, anything else
/// as its debug text. `short` writes 32-bit floats as short decimals (kept
/// columns); tensors keep their exact value.
fn json_at(a: &dyn Array, i: usize, short: bool) -> Value {
    if i >= a.len() || a.is_null(i) {
        return Value::Null;
    }
    let got = match a.data_type() {
        DataType::Null => Some(Value::Null),
        DataType::Boolean => a.as_boolean_opt().map(|b| Value::Bool(b.value(i))),
        DataType::Int8 => primitive::<Int8Type>(a).map(|p| p.value(i).into()),
        DataType::Int16 => primitive::<Int16Type>(a).map(|p| p.value(i).into()),
        DataType::Int32 => primitive::<Int32Type>(a).map(|p| p.value(i).into()),
        DataType::Int64 => primitive::<Int64Type>(a).map(|p| p.value(i).into()),
        DataType::UInt8 => primitive::<UInt8Type>(a).map(|p| p.value(i).into()),
        DataType::UInt16 => primitive::<UInt16Type>(a).map(|p| p.value(i).into()),
        DataType::UInt32 => primitive::<UInt32Type>(a).map(|p| p.value(i).into()),
        DataType::UInt64 => primitive::<UInt64Type>(a).map(|p| p.value(i).into()),
        DataType::Float16 => primitive::<Float16Type>(a).map(|p| float32(f32::from(p.value(i)), short)),
        DataType::Float32 => primitive::<Float32Type>(a).map(|p| float32(p.value(i), short)),
        DataType::Float64 => primitive::<Float64Type>(a).map(|p| float(p.value(i))),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => str_at(a, i).map(|s| Value::String(s.to_owned())),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView | DataType::FixedSizeBinary(_) => {
            bytes_at(a, i).map(|b| Value::String(base64::engine::general_purpose::STANDARD.encode(b)))
        }
        DataType::List(_) => a.as_list_opt::<i32>().map(|l| list(l.value(i).as_ref(), short)),
        DataType::LargeList(_) => a.as_list_opt::<i64>().map(|l| list(l.value(i).as_ref(), short)),
        DataType::ListView(_) => a.as_list_view_opt::<i32>().map(|l| list(l.value(i).as_ref(), short)),
        DataType::LargeListView(_) => a.as_list_view_opt::<i64>().map(|l| list(l.value(i).as_ref(), short)),
        DataType::FixedSizeList(..) => a.as_fixed_size_list_opt().map(|l| list(l.value(i).as_ref(), short)),
        DataType::Struct(_) => a.as_struct_opt().map(|s| {
            let object: Map<String, Value> = s
                .column_names()
                .into_iter()
                .zip(s.columns())
                .map(|(name, c)| (name.to_owned(), json_at(c.as_ref(), i, short)))
                .collect();
            Value::Object(object)
        }),
        DataType::Map(..) => a.as_map_opt().map(|m| {
            let entries = m.value(i);
            let (keys, values) = (entries.column(0).as_ref(), entries.column(1).as_ref());
            let object: Map<String, Value> = (0..entries.len())
                .map(|j| {
                    let k = match json_at(keys, j, short) {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (k, json_at(values, j, short))
                })
                .collect();
            Value::Object(object)
        }),
        DataType::Dictionary(..) => dictionary_entry(a, i).map(|(values, j)| json_at(values, j, short)),
        DataType::Date32 => date(primitive::<Date32Type>(a), i),
        DataType::Date64 => date(primitive::<Date64Type>(a), i),
        DataType::Timestamp(unit, tz) => {
            let tz = tz.as_deref();
            match unit {
                TimeUnit::Second => timestamp(primitive::<TimestampSecondType>(a), i, tz),
                TimeUnit::Millisecond => timestamp(primitive::<TimestampMillisecondType>(a), i, tz),
                TimeUnit::Microsecond => timestamp(primitive::<TimestampMicrosecondType>(a), i, tz),
                TimeUnit::Nanosecond => timestamp(primitive::<TimestampNanosecondType>(a), i, tz),
            }
        }
        DataType::Time32(TimeUnit::Second) => time(primitive::<Time32SecondType>(a), i),
        DataType::Time32(TimeUnit::Millisecond) => time(primitive::<Time32MillisecondType>(a), i),
        DataType::Time64(TimeUnit::Microsecond) => time(primitive::<Time64MicrosecondType>(a), i),
        DataType::Time64(TimeUnit::Nanosecond) => time(primitive::<Time64NanosecondType>(a), i),
        DataType::Duration(TimeUnit::Second) => duration(primitive::<DurationSecondType>(a), i),
        DataType::Duration(TimeUnit::Millisecond) => duration(primitive::<DurationMillisecondType>(a), i),
        DataType::Duration(TimeUnit::Microsecond) => duration(primitive::<DurationMicrosecondType>(a), i),
        DataType::Duration(TimeUnit::Nanosecond) => duration(primitive::<DurationNanosecondType>(a), i),
        DataType::Decimal32(..) => primitive::<Decimal32Type>(a).map(|p| Value::String(p.value_as_string(i))),
        DataType::Decimal64(..) => primitive::<Decimal64Type>(a).map(|p| Value::String(p.value_as_string(i))),
        DataType::Decimal128(..) => primitive::<Decimal128Type>(a).map(|p| Value::String(p.value_as_string(i))),
        DataType::Decimal256(..) => primitive::<Decimal256Type>(a).map(|p| Value::String(p.value_as_string(i))),
        _ => None,
    };
    got.unwrap_or_else(|| Value::String(debug_text(a, i)))
}

fn list(values: &dyn Array, short: bool) -> Value {
    Value::Array((0..values.len()).map(|j| json_at(values, j, short)).collect())
}

fn date<T>(p: Option<&PrimitiveArray<T>>, i: usize) -> Option<Value>
where
    T: arrow_array::types::ArrowTemporalType,
    i64: From<T::Native>,
{
    p.and_then(|p| p.value_as_date(i)).map(|d| Value::String(d.to_string()))
}

fn time<T>(p: Option<&PrimitiveArray<T>>, i: usize) -> Option<Value>
where
    T: arrow_array::types::ArrowTemporalType,
    i64: From<T::Native>,
{
    p.and_then(|p| p.value_as_time(i)).map(|t| Value::String(t.to_string()))
}

fn duration<T>(p: Option<&PrimitiveArray<T>>, i: usize) -> Option<Value>
where
    T: arrow_array::types::ArrowTemporalType,
    i64: From<T::Native>,
{
    p.and_then(|p| p.value_as_duration(i))
        .map(|d| Value::String(d.to_string()))
}

/// A timestamp in ISO 8601: with its offset when the column has a time
/// zone, else as a local date and time.
fn timestamp<T>(p: Option<&PrimitiveArray<T>>, i: usize, tz: Option<&str>) -> Option<Value>
where
    T: arrow_array::types::ArrowTemporalType,
    i64: From<T::Native>,
{
    let p = p?;
    let text = match tz.and_then(|tz| tz.parse::<arrow_array::timezone::Tz>().ok()) {
        Some(tz) => p.value_as_datetime_with_tz(i, tz)?.to_rfc3339(),
        None => p.value_as_datetime(i)?.format("%Y-%m-%dT%H:%M:%S%.f").to_string(),
    };
    Some(Value::String(text))
}

/// The debug text of value `i` (types without a JSON form).
fn debug_text(a: &dyn Array, i: usize) -> String {
    let text = format!("{:?}", a.slice(i, 1));
    // `PrimitiveArray<T>\n[\n  value,\n]`: keep the value.
    match (text.find("[\n"), text.rfind("\n]")) {
        (Some(start), Some(end)) if start + 2 <= end => text[start + 2..end].trim().trim_end_matches(',').to_owned(),
        _ => text,
    }
}

/// Walks the rows of decoded batches, numbering them from 1.
#[derive(Debug)]
struct Rows {
    plan: Plan,
    batch: Option<RecordBatch>,
    pos: usize,
    row: u64,
}

impl Rows {
    fn new(plan: Plan) -> Rows {
        Rows {
            plan,
            batch: None,
            pos: 0,
            row: 0,
        }
    }

    /// The next record of the current batch, if it has one left.
    fn next_record(&mut self) -> Option<Record> {
        let batch = self.batch.as_ref()?;
        if self.pos >= batch.num_rows() {
            self.batch = None;
            return None;
        }
        let i = self.pos;
        self.pos += 1;
        self.row += 1;
        Some(self.plan.record(batch, i, self.row))
    }

    fn load(&mut self, batch: RecordBatch) {
        self.batch = Some(batch);
        self.pos = 0;
    }

    /// The error that ends a source whose read failed after `self.row` rows.
    fn stopped(&self, path: &str, e: impl std::fmt::Display) -> SourceError {
        SourceError::Parquet {
            path: path.to_owned(),
            message: format!("read stopped after row {}: {e}", self.row),
        }
    }
}

fn unreadable(path: &str, e: impl std::fmt::Display) -> SourceError {
    SourceError::Parquet {
        path: path.to_owned(),
        message: format!("not a readable Parquet file: {e}"),
    }
}

/// The rows of a local Parquet file, read as they are asked for.
pub(crate) struct LocalRows {
    path: String,
    reader: ParquetRecordBatchReader,
    rows: Rows,
}

impl std::fmt::Debug for LocalRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalRows")
            .field("path", &self.path)
            .field("row", &self.rows.row)
            .finish_non_exhaustive()
    }
}

impl LocalRows {
    /// Reads `file`'s footer and plans the columns; `path` names it in
    /// errors.
    pub(crate) fn open(path: &str, file: File, opts: &SourceOptions) -> Result<LocalRows, SourceError> {
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| unreadable(path, e))?;
        let plan = Plan::new(builder.schema(), &opts.fields, opts.want).map_err(|message| SourceError::Parquet {
            path: path.to_owned(),
            message,
        })?;
        let mask = ProjectionMask::roots(builder.parquet_schema(), plan.roots.iter().copied());
        let reader = builder
            .with_projection(mask)
            .with_batch_size(BATCH_ROWS)
            .build()
            .map_err(|e| unreadable(path, e))?;
        Ok(LocalRows {
            path: path.to_owned(),
            reader,
            rows: Rows::new(plan),
        })
    }

    /// The next record, or the error that ends the source.
    pub(crate) fn next(&mut self) -> Option<Result<Record, SourceError>> {
        loop {
            if let Some(r) = self.rows.next_record() {
                return Some(Ok(r));
            }
            match self.reader.next()? {
                Ok(batch) => self.rows.load(batch),
                Err(e) => return Some(Err(self.rows.stopped(&self.path, e))),
            }
        }
    }
}

/// The number of rows a Parquet file's footer declares.
pub(crate) fn row_count(path: &str, file: &File) -> Result<u64, SourceError> {
    let metadata = ParquetMetaDataReader::new()
        .parse_and_finish(file)
        .map_err(|e| unreadable(path, e))?;
    Ok(u64::try_from(metadata.file_metadata().num_rows()).unwrap_or(0))
}

/// Random access to one object of a store, for the async Parquet reader:
/// ranged reads, the footer read knowing the object's size.
#[derive(Debug, Clone)]
struct StoreReader {
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    size: u64,
}

fn store_error(e: &object_store::Error) -> ParquetError {
    ParquetError::General(said(e))
}

impl AsyncFileReader for StoreReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move {
            self.store
                .get_range(&self.path, range)
                .await
                .map_err(|e| store_error(&e))
        }
        .boxed()
    }

    fn get_byte_ranges(&mut self, ranges: Vec<Range<u64>>) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move {
            self.store
                .get_ranges(&self.path, &ranges)
                .await
                .map_err(|e| store_error(&e))
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let size = self.size;
            let metadata = ParquetMetaDataReader::new()
                .with_arrow_reader_options(options)
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}

/// The records of a Parquet object of `size` bytes: its footer is read and
/// its columns planned here (an error names `uri`), then its rows are read
/// on an I/O thread of their own, a row group at a time, and wait in a
/// bounded channel.
pub(crate) fn object_records(
    uri: &str,
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    size: u64,
    opts: SourceOptions,
) -> Result<Records, SourceError> {
    let object_error = |message: String| SourceError::Object {
        uri: uri.to_owned(),
        message,
    };
    let mut reader = StoreReader { store, path, size };
    let (reader, metadata) = on_io_thread(async move {
        let metadata = ArrowReaderMetadata::load_async(&mut reader, ArrowReaderOptions::new()).await;
        (reader, metadata)
    })
    .map_err(object_error)?;
    let metadata = metadata.map_err(|e| unreadable(uri, e))?;
    let plan = Plan::new(metadata.schema(), &opts.fields, opts.want).map_err(|message| SourceError::Parquet {
        path: uri.to_owned(),
        message,
    })?;
    let mask = ProjectionMask::roots(metadata.parquet_schema(), plan.roots.iter().copied());
    let name = uri.to_owned();
    let rx = spawn_io(CHANNEL, move |tx: mpsc::Sender<Result<Record, SourceError>>| {
        Box::pin(async move {
            let stream = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, metadata)
                .with_projection(mask)
                .with_batch_size(BATCH_ROWS)
                .build();
            let mut stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.send(Err(unreadable(&name, e))).await;
                    return;
                }
            };
            let mut rows = Rows::new(plan);
            while let Some(batch) = stream.next().await {
                match batch {
                    Ok(batch) => rows.load(batch),
                    Err(e) => {
                        let _ = tx.send(Err(rows.stopped(&name, e))).await;
                        return;
                    }
                }
                while let Some(r) = rows.next_record() {
                    if tx.send(Ok(r)).await.is_err() {
                        return;
                    }
                }
            }
        })
    })
    .map_err(object_error)?;
    Ok(Records::from_channel(rx, opts))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use arrow_array::{
        ArrayRef, BinaryArray, BooleanArray, Date32Array, DictionaryArray, FixedSizeListArray, Float32Array,
        Float64Array, Int64Array, ListArray, StringArray,
    };
    use parquet::arrow::ArrowWriter;
    use parquet::basic::Compression;
    use parquet::file::properties::WriterProperties;
    use serde_json::json;

    use super::*;
    use crate::{LocalSource, Source};

    /// Writes `columns` as a Parquet file of row groups of `group` rows.
    fn write(path: &Path, columns: Vec<(&str, ArrayRef)>, group: usize) {
        let batch = RecordBatch::try_from_iter(columns).expect("batch");
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(group))
            .set_compression(Compression::SNAPPY)
            .build();
        let file = File::create(path).expect("create");
        let mut w = ArrowWriter::try_new(file, batch.schema(), Some(props)).expect("writer");
        w.write(&batch).expect("write");
        w.close().expect("close");
    }

    fn opts(want: Want, fields: Fields) -> SourceOptions {
        let mut o = SourceOptions::new(want);
        o.fields = fields;
        o
    }

    fn read_all(spec: &str, o: SourceOptions) -> Vec<Record> {
        Source::open(spec, o)
            .expect("open")
            .records()
            .expect("records")
            .collect::<Result<_, _>>()
            .expect("read")
    }

    fn open_err(spec: &str, o: SourceOptions) -> SourceError {
        match Source::open(spec, o).and_then(Source::records) {
            Ok(_) => panic!("{spec} opened"),
            Err(e) => e,
        }
    }

    fn strings(v: &[Option<&str>]) -> ArrayRef {
        Arc::new(StringArray::from(v.to_vec()))
    }

    #[test]
    fn keys_values_and_row_numbers_across_row_groups_and_batches() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("in.parquet");
        let n = 2500;
        let ids: Vec<Option<String>> = (1..=n).map(|i| (i % 7 != 0).then(|| format!("doc-{i}"))).collect();
        let texts: Vec<String> = (1..=n).map(|i| format!("text {i}")).collect();
        let langs: Vec<&str> = (1..=n).map(|i| if i % 2 == 0 { "en" } else { "fr" }).collect();
        write(
            &path,
            vec![
                ("lang", Arc::new(StringArray::from(langs)) as ArrayRef),
                ("id", Arc::new(StringArray::from(ids))),
                ("text", Arc::new(StringArray::from(texts))),
            ],
            1000,
        );
        let spec = path.display().to_string();
        let src = LocalSource::open(&spec, SourceOptions::new(Want::Text)).expect("open");
        assert_eq!(src.count().expect("count"), 2500);
        let r = read_all(&spec, SourceOptions::new(Want::Text));
        assert_eq!(r.len(), 2500);
        assert_eq!(r[0].key, "doc-1");
        assert_eq!(r[0].input, Ok(Input::Text("text 1".into())));
        // A null id is the row number; rows count on across row groups
        // (1000) and batches (1024).
        assert_eq!(r[6].key, "7");
        assert_eq!(r[1024].key, "doc-1025");
        assert_eq!(r[1024].input, Ok(Input::Text("text 1025".into())));
        assert_eq!(r[2099].key, "2100");
        assert_eq!(r[2499].key, "doc-2500");
        assert_eq!(r[2499].input, Ok(Input::Text("text 2500".into())));
        assert!(r.iter().all(|rec| rec.keep.is_none()));
    }

    #[test]
    fn integer_keys_named_columns_and_row_numbers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ints.parquet");
        write(
            &path,
            vec![
                (
                    "key",
                    Arc::new(Int64Array::from(vec![Some(10), None, Some(-3)])) as ArrayRef,
                ),
                ("doc", strings(&[Some("d1"), Some("d2"), Some("d3")])),
                ("body", strings(&[Some("a"), Some("b"), Some("c")])),
                ("text", strings(&[Some("x"), Some("y"), Some("z")])),
            ],
            2,
        );
        let spec = path.display().to_string();
        let r = read_all(&spec, SourceOptions::new(Want::Any));
        let keys: Vec<&str> = r.iter().map(|x| x.key.as_str()).collect();
        assert_eq!(keys, ["10", "2", "-3"]);
        assert_eq!(r[2].input, Ok(Input::Text("z".into())));
        let named = Fields {
            id: Some("doc".into()),
            value: Some("body".into()),
            keep: Vec::new(),
        };
        let r = read_all(&spec, opts(Want::Text, named));
        assert_eq!((r[1].key.as_str(), &r[1].input), ("d2", &Ok(Input::Text("b".into()))));

        // No key column: the row number, from 1.
        let path = dir.path().join("plain.parquet");
        write(&path, vec![("text", strings(&[Some("p"), Some("q")]))], 10);
        let r = read_all(&path.display().to_string(), SourceOptions::new(Want::Text));
        let keys: Vec<&str> = r.iter().map(|x| x.key.as_str()).collect();
        assert_eq!(keys, ["1", "2"]);
    }

    #[test]
    fn binary_values_are_bytes_even_for_an_image_model() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("images.parquet");
        let images: Vec<Option<&[u8]>> = vec![Some(&[0xff, 0xd8, 0x00]), Some(&[1, 2])];
        write(
            &path,
            vec![
                ("id", strings(&[Some("a.jpg"), Some("b.jpg")])),
                ("value", Arc::new(BinaryArray::from(images)) as ArrayRef),
            ],
            10,
        );
        let spec = path.display().to_string();
        // For an image model the file is still a table, not one input.
        let r = read_all(&spec, SourceOptions::new(Want::Bytes));
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].key, "a.jpg");
        assert_eq!(r[0].input, Ok(Input::Bytes(vec![0xff, 0xd8, 0x00])));
        assert_eq!(
            read_all(&spec, SourceOptions::new(Want::Any))[1].input,
            Ok(Input::Bytes(vec![1, 2]))
        );
        let e = open_err(&spec, SourceOptions::new(Want::Text)).to_string();
        assert!(e.contains(&spec) && e.contains("column 'value' holds bytes"), "{e}");
    }

    #[test]
    fn list_columns_of_numbers_are_tensors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tensors.parquet");
        let lists = ListArray::from_iter_primitive::<Float32Type, _, _>(vec![
            Some(vec![Some(0.5), Some(-1.0), Some(2.25)]),
            Some(vec![]),
        ]);
        let fixed = FixedSizeListArray::from_iter_primitive::<Float32Type, _, _>(
            vec![Some(vec![Some(1.0), Some(2.0)]), Some(vec![Some(3.0), Some(4.5)])],
            2,
        );
        write(
            &path,
            vec![
                ("tensor", Arc::new(lists) as ArrayRef),
                ("fixed", Arc::new(fixed) as ArrayRef),
                ("json", strings(&[Some("[[1, 2]]"), Some("nope")])),
            ],
            10,
        );
        let spec = path.display().to_string();
        let r = read_all(&spec, SourceOptions::new(Want::Json));
        assert_eq!(r[0].input, Ok(Input::Json(json!([0.5, -1.0, 2.25]))));
        assert_eq!(r[1].input, Ok(Input::Json(json!([]))));
        let fields = |value: &str| Fields {
            value: Some(value.into()),
            ..Fields::default()
        };
        let r = read_all(&spec, opts(Want::Any, fields("fixed")));
        assert_eq!(r[1].input, Ok(Input::Json(json!([3.0, 4.5]))));
        // A string column is JSON text for a tensor model.
        let r = read_all(&spec, opts(Want::Json, fields("json")));
        assert_eq!(r[0].input, Ok(Input::Json(json!([[1, 2]]))));
        let e = r[1].input.clone().expect_err("not JSON");
        assert!(e.starts_with("row 2 (key '2'): tensor input is not JSON"), "{e}");
        let e = open_err(&spec, SourceOptions::new(Want::Text)).to_string();
        assert!(e.contains("column 'tensor' holds lists of numbers"), "{e}");
    }

    #[test]
    fn a_null_value_fails_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nulls.parquet");
        write(&path, vec![("text", strings(&[Some("a"), None, Some("c")]))], 10);
        let r = read_all(&path.display().to_string(), SourceOptions::new(Want::Text));
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].input, Ok(Input::Text("a".into())));
        assert_eq!(
            (r[1].key.as_str(), &r[1].input),
            ("2", &Err("row 2: 'text' is null".into()))
        );
        assert_eq!(r[2].input, Ok(Input::Text("c".into())));
    }

    #[test]
    fn missing_named_columns_are_errors_that_name_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cols.parquet");
        write(
            &path,
            vec![("id", strings(&[Some("a")])), ("lang", strings(&[Some("en")]))],
            10,
        );
        let spec = path.display().to_string();
        let parquet_message = |e: SourceError| match e {
            SourceError::Parquet { path, message } => {
                assert_eq!(path, spec);
                message
            }
            other => panic!("not a Parquet error: {other}"),
        };
        let m = parquet_message(open_err(&spec, SourceOptions::new(Want::Text)));
        assert!(m.starts_with("no value column") && m.contains("\"lang\""), "{m}");
        let value = Fields {
            value: Some("body".into()),
            ..Fields::default()
        };
        let m = parquet_message(open_err(&spec, opts(Want::Text, value)));
        assert!(m.starts_with("no 'body' column"), "{m}");
        let id = Fields {
            id: Some("doc".into()),
            value: Some("lang".into()),
            keep: Vec::new(),
        };
        let m = parquet_message(open_err(&spec, opts(Want::Text, id)));
        assert!(m.starts_with("no 'doc' key column"), "{m}");
        let keep = Fields {
            value: Some("lang".into()),
            keep: vec!["lang".into(), "score".into()],
            ..Fields::default()
        };
        let m = parquet_message(open_err(&spec, opts(Want::Text, keep)));
        assert!(m.starts_with("no 'score' column to keep"), "{m}");
    }

    #[test]
    fn a_malformed_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.parquet");
        std::fs::write(&path, b"PAR1 this is not really a parquet file at all").expect("write");
        let spec = path.display().to_string();
        let e = open_err(&spec, SourceOptions::new(Want::Text));
        assert!(
            matches!(&e, SourceError::Parquet { path, message }
            if *path == spec && message.starts_with("not a readable Parquet file")),
            "{e}"
        );
        let src = LocalSource::open(&spec, SourceOptions::new(Want::Text)).expect("open");
        assert!(matches!(src.count(), Err(SourceError::Parquet { .. })));
    }

    #[test]
    fn a_read_error_midway_ends_the_stream() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("torn.parquet");
        let texts: Vec<String> = (1..=3000).map(|i| format!("row {i} {}", "x".repeat(i % 50))).collect();
        write(
            &path,
            vec![("text", Arc::new(StringArray::from(texts)) as ArrayRef)],
            1000,
        );
        // Overwrite the start of the last row group's column chunk (its page
        // header), leaving the footer whole.
        let file = File::open(&path).expect("open");
        let metadata = ParquetMetaDataReader::new().parse_and_finish(&file).expect("footer");
        let (start, _) = metadata.row_group(2).column(0).byte_range();
        let mut bytes = std::fs::read(&path).expect("read");
        let start = usize::try_from(start).expect("offset");
        bytes[start..start + 64].fill(0xff);
        std::fs::write(&path, &bytes).expect("write");

        let items: Vec<_> = LocalSource::open(&path.display().to_string(), SourceOptions::new(Want::Text))
            .expect("open")
            .records()
            .expect("records")
            .collect();
        let (last, rows) = items.split_last().expect("items");
        assert!(
            matches!(last, Err(SourceError::Parquet { message, .. }) if message.starts_with("read stopped after row")),
            "{last:?}"
        );
        assert!(!rows.is_empty() && rows.len() < 3000, "{} rows", rows.len());
        for (i, r) in rows.iter().enumerate() {
            let r = r.as_ref().expect("a record before the error");
            assert_eq!(r.key, (i + 1).to_string());
        }
    }

    #[test]
    fn kept_columns_are_json_values() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keep.parquet");
        let tags = ListArray::from_iter_primitive::<arrow_array::types::Int64Type, _, _>(vec![
            Some(vec![Some(1), Some(2)]),
            None,
        ]);
        let lang: DictionaryArray<Int32Type> = vec!["en", "fr"].into_iter().collect();
        write(
            &path,
            vec![
                ("id", Arc::new(Int64Array::from(vec![7, 8])) as ArrayRef),
                ("text", strings(&[Some("hello"), None])),
                ("lang", Arc::new(lang) as ArrayRef),
                ("score", Arc::new(Float32Array::from(vec![Some(0.1), None])) as ArrayRef),
                ("ratio", Arc::new(Float64Array::from(vec![0.25, f64::NAN])) as ArrayRef),
                ("ok", Arc::new(BooleanArray::from(vec![true, false])) as ArrayRef),
                ("tags", Arc::new(tags) as ArrayRef),
                ("day", Arc::new(Date32Array::from(vec![19_723, 0])) as ArrayRef),
            ],
            10,
        );
        // Every kind of column but `id`, a result field that cannot be kept (`Fields::check_keep`).
        let names = ["tags", "text", "lang", "score", "ratio", "ok", "day"];
        let fields = Fields {
            keep: names.iter().map(|s| (*s).to_owned()).collect(),
            ..Fields::default()
        };
        let r = read_all(&path.display().to_string(), opts(Want::Text, fields));
        let k0 = r[0].keep.clone().expect("kept");
        assert_eq!(k0.len(), names.len());
        for name in names {
            assert!(k0.contains_key(name), "{name}");
        }
        assert_eq!(k0["tags"], json!([1, 2]));
        assert_eq!(k0["text"], json!("hello"));
        assert_eq!(k0["lang"], json!("en"));
        assert_eq!(k0["score"], json!(0.1));
        assert_eq!(k0["ratio"], json!(0.25));
        assert_eq!(k0["ok"], json!(true));
        assert_eq!(k0["day"], json!("2024-01-01"));
        // The failed row keeps its columns too; nulls are null.
        assert_eq!(r[1].input, Err("row 2: 'text' is null".into()));
        let k1 = r[1].keep.clone().expect("kept");
        assert_eq!(k1["text"], Value::Null);
        assert_eq!(k1["tags"], Value::Null);
        assert_eq!(k1["score"], Value::Null);
        assert_eq!(k1["ratio"], json!("NaN"));
        assert_eq!(k1["lang"], json!("fr"));
        assert_eq!(k1["day"], json!("1970-01-01"));
    }

    #[test]
    fn objects_are_read_through_the_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("remote.parquet");
        let n = 1500;
        let texts: Vec<String> = (1..=n).map(|i| format!("t{i}")).collect();
        let ids: Vec<i64> = (1..=n).map(|i| i * 10).collect();
        write(
            &path,
            vec![
                ("id", Arc::new(Int64Array::from(ids)) as ArrayRef),
                ("text", Arc::new(StringArray::from(texts)) as ArrayRef),
            ],
            500,
        );
        let uri = format!("file://{}", path.display());
        let fields = Fields {
            keep: vec!["text".into()],
            ..Fields::default()
        };
        let src = Source::open(&uri, opts(Want::Text, fields.clone())).expect("open");
        assert_eq!(src.count().expect("count"), None);
        let r = read_all(&uri, opts(Want::Text, fields));
        assert_eq!(r.len(), 1500);
        assert_eq!(r[0].key, "10");
        assert_eq!(r[1499].key, "15000");
        assert_eq!(r[1024].input, Ok(Input::Text("t1025".into())));
        assert_eq!(r[1024].keep.as_ref().map(|k| k["text"].clone()), Some(json!("t1025")));
        // An image model reads the object as a table too.
        let e = open_err(&uri, SourceOptions::new(Want::Bytes)).to_string();
        assert!(e.contains("column 'text' holds text"), "{e}");

        let bad = dir.path().join("bad.parquet");
        std::fs::write(&bad, b"not parquet").expect("write");
        let bad_uri = format!("file://{}", bad.display());
        let e = open_err(&bad_uri, SourceOptions::new(Want::Text));
        assert!(
            matches!(&e, SourceError::Parquet { path, .. } if *path == bad_uri),
            "{e}"
        );
    }

    #[tokio::test]
    async fn objects_stream_through_a_bounded_channel() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.parquet");
        let texts: Vec<String> = (1..=300).map(|i| format!("t{i}")).collect();
        write(
            &path,
            vec![("text", Arc::new(StringArray::from(texts)) as ArrayRef)],
            100,
        );
        let uri = format!("file://{}", path.display());
        let mut rx = Source::open(&uri, SourceOptions::new(Want::Text))
            .expect("open")
            .stream(4);
        let mut n = 0;
        while let Some(r) = rx.recv().await {
            let r = r.expect("record");
            n += 1;
            assert_eq!(r.key, n.to_string());
            assert_eq!(r.input, Ok(Input::Text(format!("t{n}"))));
        }
        assert_eq!(n, 300);
    }

    #[test]
    fn base64_text_columns_are_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("b64.parquet");
        write(&path, vec![("base64", strings(&[Some("AAE="), Some("!!")]))], 10);
        let r = read_all(&path.display().to_string(), SourceOptions::new(Want::Bytes));
        assert_eq!(r[0].input, Ok(Input::Bytes(vec![0, 1])));
        assert!(r[1].input.as_ref().is_err_and(|e| e.contains("invalid base64")));
    }

    #[test]
    fn debug_text_keeps_the_value() {
        let a = arrow_array::IntervalYearMonthArray::from(vec![14]);
        assert_eq!(json_at(&a, 0, true), json!("14"));
    }
}
