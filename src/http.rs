//! Health, readiness, metrics and the CXone webhook.
