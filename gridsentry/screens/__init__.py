"""Monitoring-centre screens: the latest-values state, Prometheus exposition of the fleet, the wall screen."""
