//! How the CLI opens its inputs: through `sluice-io`, the reader jobs use too,
//! with what the model's processing takes deciding how values are read.

use sluice_core::spec::ProcessingSpec;
use sluice_io::{Fields, Record, Source, SourceError, SourceOptions, Want};
use tokio::sync::mpsc;

/// Records waiting between the reader thread and the model.
const READ_AHEAD: usize = 256;

/// What kind of payload the model takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Text.
    Text,
    /// Image files.
    Image,
    /// JSON tensors.
    Tensor,
}

impl Kind {
    /// The kind a processing chain takes.
    pub fn of(p: &ProcessingSpec) -> Kind {
        match p {
            ProcessingSpec::Text(_) => Kind::Text,
            ProcessingSpec::Image(_) => Kind::Image,
            ProcessingSpec::Tensor(_) => Kind::Tensor,
            ProcessingSpec::Bytes(_) => Kind::Text,
        }
    }

    fn want(self) -> Want {
        match self {
            Kind::Text => Want::Text,
            Kind::Image => Want::Bytes,
            Kind::Tensor => Want::Json,
        }
    }
}

/// Opens `spec` (a file, a folder, a glob, or an object-store URI such as
/// `s3://bucket/texts.jsonl` or `s3://bucket/images/`) for a model of `kind`; `id_field`
/// and `field` name the key and value fields of JSONL, CSV and Parquet records
/// (`id_field` "id" keeps the default rules, which also accept `key`), and
/// `keep` the input columns copied into each result row (`--keep-columns`;
/// empty for none). Kept columns asked of a source without columns, or
/// missing from a CSV header or a Parquet schema, are a [`SourceError`].
pub fn open(
    spec: &str,
    kind: Kind,
    id_field: &str,
    field: Option<&str>,
    keep: &[String],
) -> Result<Source, SourceError> {
    let mut opts = SourceOptions::new(kind.want());
    opts.fields = Fields {
        id: (id_field != "id").then(|| id_field.to_owned()),
        value: field.map(str::to_owned),
        keep: keep.to_vec(),
    };
    Source::open(spec, opts)
}

/// The source's records through a small bounded channel, read on a thread
/// of their own; an `Err` is the last item.
pub fn stream(source: Source) -> mpsc::Receiver<Result<Record, SourceError>> {
    source.stream(READ_AHEAD)
}
