//! The mapper's client of edgecore accepts a MapperRegister answer above gRPC's default decoding limit of 4 MiB
//! (about 5,500 Devices, issue 23), up to `mapper::MAX_ANSWER_BYTES`. The server here is a bare generated
//! DeviceManagerService that only answers with a large list (not a stand-in of edgecore's rules: only the size
//! matters).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test
#![allow(clippy::disallowed_types)] // the server side names the request types it receives; it builds none

use std::time::Duration;

use twinflash_dmi::mapper::{EdgecoreClient, MapperInfo};
use twinflash_dmi::pb;

struct Big;

#[tonic::async_trait]
impl pb::device_manager_service_server::DeviceManagerService for Big {
    async fn mapper_register(
        &self,
        _: tonic::Request<pb::MapperRegisterRequest>,
    ) -> Result<tonic::Response<pb::MapperRegisterResponse>, tonic::Status> {
        // 6 MiB: six models with a 1 MiB description each.
        let model_list = (0..6)
            .map(|i| pb::DeviceModel {
                name: format!("m-{i}"),
                namespace: "default".into(),
                spec: Some(pb::DeviceModelSpec {
                    properties: vec![pb::ModelProperty {
                        name: "firmware".into(),
                        description: "d".repeat(1024 * 1024),
                        ..Default::default()
                    }],
                }),
            })
            .collect();
        Ok(tonic::Response::new(pb::MapperRegisterResponse {
            model_list,
            device_list: Vec::new(),
        }))
    }
    async fn report_device_status(
        &self,
        _: tonic::Request<pb::ReportDeviceStatusRequest>,
    ) -> Result<tonic::Response<pb::ReportDeviceStatusResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not here"))
    }
    async fn report_device_states(
        &self,
        _: tonic::Request<pb::ReportDeviceStatesRequest>,
    ) -> Result<tonic::Response<pb::ReportDeviceStatesResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not here"))
    }
}

#[tokio::test]
async fn a_mapper_register_answer_above_4_mib_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("dmi.sock");
    let incoming = twinflash_dmi::transport::bind(&socket).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(twinflash_dmi::transport::serve(
        incoming,
        pb::device_manager_service_server::DeviceManagerServiceServer::new(Big),
        async {
            let _ = stopped.await;
        },
    ));
    let info = MapperInfo::new(
        "twinflash",
        "0",
        "twinflash",
        &dir.path().join("mapper.sock"),
    )
    .unwrap();
    let mut client = EdgecoreClient::new(socket, Duration::from_secs(20));
    let answer = client.register(&info).await.unwrap();
    assert_eq!(answer.model_list.len(), 6);
    let _ = stop.send(());
    server.await.unwrap();
}
