//! The Check method on the wire: `envoy.service.auth.v3.Authorization/Check` served with a
//! codec that never turns a CheckRequest it cannot decode into a gRPC error.
//!
//! The generated tonic server decodes a request before the service sees it, so a message that
//! is not valid protobuf (a string field holding invalid UTF-8, a truncated field, a broken
//! varint) became a gRPC `INTERNAL` error, and Envoy's `failure_mode_allow` decided its fate.
//! [`CheckServer`] replaces it: its codec reads a message into [`Incoming`], either the
//! request or the reason it does not decode, and an undecodable one is answered like a Check
//! that carries nothing, which `decide` denies (`unauthenticated`: no caller can be read from
//! it; `no_policy` before a bundle is in force). Each such request is counted as that denial
//! and logged as a throttled warning naming the decoding error.
//!
//! What stays a gRPC error is what never reaches the codec: a message over
//! [`MAX_CHECK_REQUEST_BYTES`] (`OUT_OF_RANGE`, refused by tonic before it is buffered, so an
//! oversized message costs no memory), a compressed message (no compression is offered), a
//! method other than Check (`UNIMPLEMENTED`). docs/ARCHITECTURE.md §8 lists them.
//!
//! This module owns only the wire: it must never decide (every answer is
//! [`AuthzService::respond`]'s) and never log a message's contents.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Buf;
use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse};
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{http, Body, BoxFuture, StdError};
use tonic::server::{NamedService, UnaryService};
use tonic::Status;

use super::AuthzService;
use crate::telemetry::throttle::Throttle;

/// The largest CheckRequest read (tonic's default, stated): 4 MiB. Envoy's requests are a few
/// KiB; its own limit on the body it forwards is far below this.
pub const MAX_CHECK_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// The one method served.
const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// A CheckRequest as read off the wire.
// Moved once, into tonic's request, and almost always the large variant: boxing it would
// only add an allocation per Check.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(super) enum Incoming {
    /// A well-formed request.
    Request(CheckRequest),
    /// Bytes that are not a CheckRequest, and why.
    Malformed(prost::DecodeError),
}

/// Reads [`Incoming`], writes `CheckResponse`.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct CheckCodec;

impl Codec for CheckCodec {
    type Encode = CheckResponse;
    type Decode = Incoming;
    type Encoder = CheckCodec;
    type Decoder = CheckCodec;

    fn encoder(&mut self) -> CheckCodec {
        CheckCodec
    }

    fn decoder(&mut self) -> CheckCodec {
        CheckCodec
    }
}

impl Encoder for CheckCodec {
    type Item = CheckResponse;
    type Error = Status;

    fn encode(&mut self, item: CheckResponse, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("cannot encode the CheckResponse: {e}")))
    }
}

impl Decoder for CheckCodec {
    type Item = Incoming;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Incoming>, Status> {
        let decoded = CheckRequest::decode(&mut *src);
        // Whatever the decoder left of a broken message belongs to no other message.
        src.advance(src.remaining());
        Ok(Some(match decoded {
            Ok(request) => Incoming::Request(request),
            Err(error) => Incoming::Malformed(error),
        }))
    }
}

/// `envoy.service.auth.v3.Authorization` for tonic's router; see the module documentation.
#[derive(Debug, Clone)]
pub struct CheckServer {
    service: AuthzService,
    malformed: Arc<Throttle>,
}

impl CheckServer {
    /// Serve Check from `service`.
    pub fn new(service: AuthzService) -> CheckServer {
        CheckServer {
            service,
            malformed: Arc::new(Throttle::default()),
        }
    }

    /// The answer to one message off the wire.
    pub(super) fn answer(&self, incoming: &Incoming) -> CheckResponse {
        match incoming {
            Incoming::Request(request) => self.service.respond(request),
            Incoming::Malformed(error) => {
                if let Some(suppressed) = self.malformed.admit() {
                    tracing::warn!(%error, suppressed, "undecodable CheckRequest: judged as a request with nothing in it");
                }
                self.service.respond(&CheckRequest::default())
            }
        }
    }
}

impl NamedService for CheckServer {
    const NAME: &'static str = "envoy.service.auth.v3.Authorization";
}

/// Check, as tonic's unary method.
struct CheckMethod(CheckServer);

impl UnaryService<Incoming> for CheckMethod {
    type Response = CheckResponse;
    type Future = std::future::Ready<Result<tonic::Response<CheckResponse>, Status>>;

    fn call(&mut self, request: tonic::Request<Incoming>) -> Self::Future {
        std::future::ready(Ok(tonic::Response::new(self.0.answer(request.get_ref()))))
    }
}

impl<B> tonic::codegen::Service<http::Request<B>> for CheckServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != CHECK_PATH {
            return Box::pin(async {
                Ok(Status::unimplemented("only Check is served").into_http())
            });
        }
        let method = CheckMethod(self.clone());
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(CheckCodec)
                .apply_max_message_size_config(Some(MAX_CHECK_REQUEST_BYTES), None);
            Ok(grpc.unary(method, request).await)
        })
    }
}
