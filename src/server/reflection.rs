//! gRPC server reflection, so tools such as `grpcurl` and `grpcui` can list
//! and call the services without the `.proto` file.
//!
//! Both protocol versions are served: `grpc.reflection.v1` for current
//! tools and `grpc.reflection.v1alpha` for the many still in use that speak
//! only that one (grpcurl up to 1.8 says "server does not support the
//! reflection API" without it). Both describe the chat service and the
//! health service.

use tonic_reflection::server::{Builder, v1, v1alpha};

/// One reflection builder over every descriptor the server serves.
fn builder() -> Builder<'static> {
    Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// The v1 reflection service.
pub(crate) fn v1() -> anyhow::Result<v1::ServerReflectionServer<impl v1::ServerReflection>> {
    Ok(builder().build_v1()?)
}

/// The v1alpha reflection service.
pub(crate) fn v1alpha()
-> anyhow::Result<v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection>> {
    Ok(builder().build_v1alpha()?)
}
