"""Take the README's screenshot of the web UI: the gateway on a free port, Debian's Chromium headless.

.venv/bin/python scripts/screenshot.py [--out docs/screenshot.png]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from aiohttp import web
from playwright.async_api import async_playwright

from gateway.app import create_app
from gateway.config import Settings

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--headless",
]


async def shoot(out: Path) -> None:
    runner = web.AppRunner(create_app(Settings.from_env({})))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = await browser.new_page(viewport={"width": 1000, "height": 900})
            await page.goto(f"http://127.0.0.1:{port}/")
            await page.fill("#g-prompt", "put @sarah in this red dress")
            await page.fill(
                "#g-working_image_url", "https://demo.supabase.co/storage/v1/object/public/me.jpg"
            )
            await page.click("#g-submit")
            await page.wait_for_selector("#g-result:not([hidden])")
            out.parent.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(out), full_page=True)
            await browser.close()
    finally:
        await runner.cleanup()
    sys.stdout.write(f"wrote {out}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/screenshot.png"))
    asyncio.run(shoot(parser.parse_args().out))


if __name__ == "__main__":
    main()
