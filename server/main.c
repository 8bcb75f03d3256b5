/* server/main.c — the peftd command line: `peftd serve` and `peftd generate`. */
#include <stdio.h>

int main(int argc, char **argv) {
    (void)argc; (void)argv;
    fprintf(stderr, "peftd: under construction\n");
    return 2;
}
