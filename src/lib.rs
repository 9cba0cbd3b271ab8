//! mesh: the root package owns the end-to-end tests and benchmarks; see crates/ for the code.
