"""The execution environment: devices, seeding and progress bars (imports only ``rws.errors``)."""
