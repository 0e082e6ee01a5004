"""The toy world: procedurally drawn icons, a small SD-1.x-architecture model trained on them
and a judge, so that concept erasure can be measured on a CPU."""
