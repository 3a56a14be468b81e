"""Python stubs of berth's gRPC API, generated from proto/ by berthspawner.gen_proto. Never edit."""
