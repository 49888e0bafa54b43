"""Reports the service contract asks for (monthly operations report, SLA KPIs)."""
