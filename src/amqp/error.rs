//! The one error type of the broker side.

/// Something went wrong with the broker.
#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    #[error(
        "cannot connect to the broker at {url}: {source}; check amqp.url (AMQP_URL) and that RabbitMQ is running"
    )]
    Connect {
        url: String,
        #[source]
        source: lapin::Error,
    },
    #[error("declaring {what} failed: {source}{hint}")]
    Topology {
        what: String,
        hint: &'static str,
        #[source]
        source: lapin::Error,
    },
    #[error("broker channel error during {op}: {source}")]
    Channel {
        op: &'static str,
        #[source]
        source: lapin::Error,
    },
    #[error(
        "the broker refused (nacked) a message published to exchange {exchange:?} with routing key {routing_key:?}"
    )]
    Nacked {
        exchange: String,
        routing_key: String,
    },
    #[error(
        "a message published to exchange {exchange:?} with routing key {routing_key:?} was returned as unroutable: the topology is broken (missing binding or alternate exchange); restart the worker to redeclare it"
    )]
    Returned {
        exchange: String,
        routing_key: String,
    },
    #[error("the broker connection is down; the message was not published")]
    Disconnected,
    #[error("amqp.ca_file: {0}")]
    CaFile(crate::tls::CaFileError),
}

impl AmqpError {
    /// Connection-level problems heal by reconnecting; topology mismatches do not.
    pub fn is_transient(&self) -> bool {
        !matches!(
            self,
            AmqpError::Topology { .. } | AmqpError::Returned { .. } | AmqpError::CaFile(_)
        )
    }
}
