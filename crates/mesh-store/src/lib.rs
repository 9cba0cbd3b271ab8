//! mesh-store
