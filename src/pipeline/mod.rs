//! The pipeline: batcher, import scheduler, job tracker, settlement.
