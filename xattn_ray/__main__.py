"""`python -m xattn_ray` is the `xattn-ray` command."""

from xattn_ray.cli import main

raise SystemExit(main())
