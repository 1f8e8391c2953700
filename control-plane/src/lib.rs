//! `sbc-control`: the SBC's control plane.
//!
//! Layout: [`app`] holds the running state (config, media links, session book, metrics);
//! [`driver`] holds the tokio shells (media RPC client, admin socket, signals);
//! [`admin`] is the `sbcctl` protocol; [`book`] records the media sessions we own and
//! what we stored with them. Protocol logic (SIP, SDP, registrar, B2BUA) will live in
//! `proto/`, sans-IO.

pub mod admin;
pub mod app;
pub mod book;
pub mod clock;
pub mod driver;
pub mod metrics;
pub mod work;
