//! AMQP: connection, topology, confirmed publisher.
