"""The project's own tests: unit, integration, fault injection, interop."""
