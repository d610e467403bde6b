//! End-to-end tests: the real `warden` binary in front of a real PostgreSQL cluster, with psql and
//! tokio-postgres as clients. One cluster and one Warden for the whole binary (see common/).

mod api;
mod approval;
mod audit;
mod common;
mod connect;
mod crash;
mod lifecycle;
mod quickstart;
mod redteam;
mod refusals;
mod relay;
mod sessions;
mod sinks;
