// fa-train: see docs/trainer.md. Kept free of torch headers (trainer.h is
// plain C++) so this translation unit compiles in a moment.
#include "trainer.h"

int main(int argc, char** argv) { return fatrain::cli_main(argc, argv); }
