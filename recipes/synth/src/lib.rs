//! Synthetic financial documents.
