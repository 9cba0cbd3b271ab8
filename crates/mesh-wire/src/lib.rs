//! mesh-wire
