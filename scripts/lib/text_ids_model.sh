# Sourced by the benchmarks: write_text_ids_model DIR writes DIR/text-ids/model.toml,
# a cheap text model: the real MiniLM tokenizer (models/minilm-l6/tokenizer.json)
# in front of the fixture graph crates/sluice-engine/tests/fixtures/text_ids.onnx
# (input_ids, attention_mask -> last_hidden_state; no token_type_ids), mean
# pooling, max_batch_size 64: the figures are dominated by the server (ingest,
# store, scheduler, tokenizer), not by the model. Needs ROOT (the repository).
write_text_ids_model() {
    local dir="$1/text-ids"
    local graph="$ROOT/crates/sluice-engine/tests/fixtures/text_ids.onnx"
    local tokenizer="$ROOT/models/minilm-l6/tokenizer.json"
    json_str() { python3 -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$1"; }
    mkdir -p "$dir"
    cat > "$dir/model.toml" <<TOML
description = "MiniLM tokenizer + text_ids.onnx: a text model that costs almost nothing"
runtime = "onnx"
model_file = $(json_str "$graph")
max_batch_size = 64
max_batch_delay_ms = 5
instances = 1
device = "cpu"
intra_op_threads = 1
group_by_length = true

[processing]
type = "text"
tokenizer = $(json_str "$tokenizer")
max_length = 64
input_ids = "input_ids"
attention_mask = "attention_mask"
# text_ids.onnx has no token_type_ids input; a name the graph lacks is not fed.
token_type_ids = "token_type_ids"
output = "last_hidden_state"
pooling = "mean"
normalize = true
TOML
}

# check_bench_files: the files the text benchmarks read must be there (setup.sh makes them).
check_bench_files() {
    local f
    for f in "$ROOT/models/minilm-l6/tokenizer.json" "$ROOT/crates/sluice-engine/tests/fixtures/text_ids.onnx" \
        "$ROOT/data/texts/sample.jsonl"; do
        [[ -f "$f" ]] || { echo "missing $f: run bash scripts/setup.sh first" >&2; exit 1; }
    done
}
