//! Entry points shared by the cargo-fuzz targets (`fuzz/`) and the stable corpus replay
//! test (being written).
