-- Sluice store, schema version 6: how a source job's source is read (see the crate documentation).

-- Options of the source's reader as JSON, opaque to the store (the jobs runtime writes and reads
-- them: the sampling of video files, {"fps": 2}, {"every": 5}, "keyframes"). NULL: the defaults.
ALTER TABLE jobs ADD COLUMN source_options TEXT;
