//! The admin Unix socket `sbcctl` talks to: one JSON request frame in, one response out.

use std::sync::Arc;
use std::time::Duration;

use sbc_shared::rpc::codec::{DEFAULT_MAX_FRAME_LEN, decode};
use sbc_shared::rpc::stream::{FrameReader, FrameWriter};
use tokio::net::UnixListener;
use tracing::{debug, warn};

use crate::admin::{AdminRequest, AdminResponse};
use crate::app::Control;

pub async fn serve(listener: UnixListener, control: Arc<Control>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "admin socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let control = control.clone();
        tokio::spawn(async move {
            let (r, w) = stream.into_split();
            let mut reader = FrameReader::new(r, DEFAULT_MAX_FRAME_LEN, Duration::from_secs(10));
            let mut writer = FrameWriter::new(w);
            loop {
                let frame = match reader.read_frame().await {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => {
                        debug!(error = %e, "admin connection closed");
                        break;
                    }
                };
                let response = match decode::<AdminRequest>(&frame) {
                    Ok(request) => control.admin(request).await,
                    Err(e) => AdminResponse::Error {
                        message: format!("not an admin request: {e}"),
                    },
                };
                if writer.write_msg(&response).await.is_err() {
                    break;
                }
            }
        });
    }
}
