//! tonic services: each translates wire types, calls the domain, and translates back.

pub mod admin;
pub mod kserve;
