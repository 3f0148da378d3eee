//! HTTP glue shared by the API Gateway functions.
