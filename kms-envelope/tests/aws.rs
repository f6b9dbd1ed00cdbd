//! AWS
