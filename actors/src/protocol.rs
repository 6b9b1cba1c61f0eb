//! Celery's message protocol (v2 and v1) and rpc:// result bodies. Pure: no I/O.
//!
//! [`message::decode`] turns a delivery's parts into a [`message::TaskRequest`];
//! [`result::result_body`] builds the JSON a Python `AsyncResult` waits for;
//! [`encode::TaskMessage`] builds task messages the way `celery call` does.

pub mod canvas;
pub mod encode;
pub mod message;
pub mod pidbox;
pub mod python;
pub mod repr;
pub mod result;
pub mod time;

pub use message::{
    DeliveryInfo, RawMessage, TaskRequest, decode, decode_keeping_body, decode_with_limit,
};
pub use python::{Properties, PythonMessage};
pub use result::{ExceptionInfo, Extended, ResultState, result_body, stored_result};
