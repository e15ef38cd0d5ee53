//! The DeviceMapperService edgecore calls on the agent's socket. Every call is journaled before it is answered and
//! answered at once (see the fleet); edgecore ignores the content of the answers, only the status counts.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use twinflash_dmi::pb;
use twinflash_dmi::pb::device_mapper_service_server::DeviceMapperService;

use super::fleet::{self, DeliverError, Fleet};
use super::store::Kind;

/// See the module doc.
#[derive(Debug, Clone)]
pub struct MapperService {
    fleet: Arc<Fleet>,
}

impl MapperService {
    /// The service of `fleet`.
    pub fn new(fleet: Arc<Fleet>) -> MapperService {
        MapperService { fleet }
    }
}

fn refused(e: &DeliverError) -> Status {
    tracing::warn!(error = %e, "refusing a DMI call from edgecore");
    match e {
        DeliverError::Store(_) => Status::unavailable(e.to_string()),
        DeliverError::Full => Status::resource_exhausted(e.to_string()),
        _ => Status::invalid_argument(e.to_string()),
    }
}

/// `namespace/name` when both are valid Kubernetes names (they name files), else InvalidArgument.
fn checked(namespace: &str, name: &str) -> Result<String, Status> {
    fleet::checked_id(namespace, name).map_err(|e| refused(&e))
}

/// CreateDeviceModel and UpdateDeviceModel: the model is journaled (edgecore already merged its defaults into
/// every Device it sends, so the agent reads nothing else from it).
fn store_model(fleet: &Fleet, model: Option<&pb::DeviceModel>, call: &str) -> Result<(), Status> {
    let model = model.ok_or_else(|| Status::invalid_argument("the request carries no model"))?;
    let id = checked(&model.namespace, &model.name)?;
    if !fleet
        .store()
        .admits(Kind::Model, &model.namespace, &model.name)
    {
        tracing::warn!(model = %id, "{call}: refused, the DMI journal holds its most models");
        return Err(Status::resource_exhausted(format!(
            "dmi-store-full: the mapper keeps at most {} DeviceModels",
            super::store::MAX_MODELS
        )));
    }
    fleet
        .store()
        .put(Kind::Model, &model.namespace, &model.name, model)
        .map_err(|e| Status::unavailable(e.to_string()))?;
    tracing::debug!(model = %id, "{call}");
    Ok(())
}

#[tonic::async_trait]
impl DeviceMapperService for MapperService {
    async fn register_device(
        &self,
        request: Request<pb::RegisterDeviceRequest>,
    ) -> Result<Response<pb::RegisterDeviceResponse>, Status> {
        let dev = request
            .into_inner()
            .device
            .ok_or_else(|| Status::invalid_argument("the request carries no device"))?;
        let (name, namespace) = (dev.name.clone(), dev.namespace.clone());
        let id = self.fleet.deliver(dev).map_err(|e| refused(&e))?;
        tracing::debug!(device = %id, "RegisterDevice");
        Ok(Response::new(pb::RegisterDeviceResponse {
            device_name: name,
            device_namespace: namespace,
        }))
    }

    async fn update_device(
        &self,
        request: Request<pb::UpdateDeviceRequest>,
    ) -> Result<Response<pb::UpdateDeviceResponse>, Status> {
        let dev = request
            .into_inner()
            .device
            .ok_or_else(|| Status::invalid_argument("the request carries no device"))?;
        let id = self.fleet.deliver(dev).map_err(|e| refused(&e))?;
        tracing::debug!(device = %id, "UpdateDevice");
        Ok(Response::new(pb::UpdateDeviceResponse {}))
    }

    async fn remove_device(
        &self,
        request: Request<pb::RemoveDeviceRequest>,
    ) -> Result<Response<pb::RemoveDeviceResponse>, Status> {
        let r = request.into_inner();
        self.fleet
            .remove(&r.device_namespace, &r.device_name)
            .map_err(|e| refused(&e))?;
        tracing::debug!(namespace = %r.device_namespace, name = %r.device_name, "RemoveDevice");
        Ok(Response::new(pb::RemoveDeviceResponse {}))
    }

    async fn create_device_model(
        &self,
        request: Request<pb::CreateDeviceModelRequest>,
    ) -> Result<Response<pb::CreateDeviceModelResponse>, Status> {
        let model = request.into_inner().model;
        store_model(&self.fleet, model.as_ref(), "CreateDeviceModel")?;
        let model = model.unwrap_or_default();
        Ok(Response::new(pb::CreateDeviceModelResponse {
            device_model_name: model.name,
            device_model_namespace: model.namespace,
        }))
    }

    async fn update_device_model(
        &self,
        request: Request<pb::UpdateDeviceModelRequest>,
    ) -> Result<Response<pb::UpdateDeviceModelResponse>, Status> {
        store_model(
            &self.fleet,
            request.into_inner().model.as_ref(),
            "UpdateDeviceModel",
        )?;
        Ok(Response::new(pb::UpdateDeviceModelResponse {}))
    }

    async fn remove_device_model(
        &self,
        request: Request<pb::RemoveDeviceModelRequest>,
    ) -> Result<Response<pb::RemoveDeviceModelResponse>, Status> {
        let r = request.into_inner();
        checked(&r.model_namespace, &r.model_name)?;
        self.fleet
            .store()
            .remove(Kind::Model, &r.model_namespace, &r.model_name)
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(pb::RemoveDeviceModelResponse {}))
    }

    async fn get_device(
        &self,
        request: Request<pb::GetDeviceRequest>,
    ) -> Result<Response<pb::GetDeviceResponse>, Status> {
        let r = request.into_inner();
        checked(&r.device_namespace, &r.device_name)?;
        match self
            .fleet
            .store()
            .device(&r.device_namespace, &r.device_name)
        {
            Some(device) => Ok(Response::new(pb::GetDeviceResponse {
                device: Some(device),
            })),
            None => Err(Status::not_found("this mapper does not manage that Device")),
        }
    }
}
