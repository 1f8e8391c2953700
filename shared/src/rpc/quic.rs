//! The QUIC transport (placeholder; being written).
