//! Code generated from `proto/`, the only definition of Ferrite's API.
//!
//! Owns the wire types and the encoded descriptor set that server reflection serves.
//! It holds no logic beyond the gRPC codec (`codec`): conversions and validation live in
//! `ferrite-server`, and the domain crates never see these types.

pub mod codec;

/// `ferrite.v1`: features, scoring, search, experiments and admin services.
pub mod ferrite {
    pub mod v1 {
        tonic::include_proto!("ferrite.v1");
    }
}

/// `inference`: the KServe v2 Open Inference Protocol with Triton's extensions.
pub mod inference {
    tonic::include_proto!("inference");
}

/// The encoded `FileDescriptorSet` of every file in `proto/` and its imports.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ferrite_descriptor.bin"));

#[cfg(test)]
mod tests {
    use prost::Message;

    #[test]
    fn descriptor_set_names_every_service() {
        let fds = prost_types::FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET).unwrap();
        let services: Vec<String> = fds
            .file
            .iter()
            .flat_map(|f| {
                let package = f.package().to_string();
                f.service.iter().map(move |s| format!("{package}.{}", s.name()))
            })
            .collect();
        for expected in [
            "ferrite.v1.FeatureService",
            "ferrite.v1.ScoringService",
            "ferrite.v1.SearchService",
            "ferrite.v1.ExperimentService",
            "ferrite.v1.AdminService",
            "inference.GRPCInferenceService",
        ] {
            assert!(
                services.iter().any(|s| s == expected),
                "{expected} missing from {services:?}"
            );
        }
    }

    #[test]
    fn kserve_request_keeps_published_field_numbers() {
        // Field 7 (raw_input_contents) must stay field 7 for tritonclient to interoperate.
        let req = super::inference::ModelInferRequest {
            raw_input_contents: vec![vec![1, 2, 3]],
            ..Default::default()
        };
        let bytes = req.encode_to_vec();
        assert_eq!(
            bytes[0],
            (7 << 3) | 2,
            "raw_input_contents is not encoded as field 7"
        );
    }
}
