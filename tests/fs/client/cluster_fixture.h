// Moved to tests/fs/testing/cluster_fixture.h (shared by the fs test suites); kept so includes of
// this path keep working.
#pragma once
#include "../testing/cluster_fixture.h"
