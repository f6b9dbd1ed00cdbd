//! AWS KMS (work in progress).
