// Loads the Sluice dashboard in headless Chromium (Debian's, driven by
// playwright-core) from a running server with a job in progress, and checks
// that the job's progress advances between two reads, that the batch-size
// chart and the throughput chart rendered, and that the page fetched nothing
// from outside the server; then cancels the job with its button. Saves a
// screenshot (before canceling).
//
// usage: node dashboard.mjs BASE_URL JOB_ID MODEL SCREENSHOT
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const [base, jobId, model, shot] = process.argv.slice(2);
if (!base || !jobId || !model || !shot) {
  console.error("usage: node dashboard.mjs BASE_URL JOB_ID MODEL SCREENSHOT");
  process.exit(2);
}

function fail(msg) {
  throw new Error(msg);
}

const profile = mkdtempSync(join(tmpdir(), "sluice-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1360, height: 1000 },
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
let code = 0;
try {
  const page = context.pages()[0] || (await context.newPage());
  const errors = [];
  const foreign = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  page.on("request", (r) => {
    const u = r.url();
    if (!u.startsWith(base + "/") && !u.startsWith("data:")) foreign.push(u);
  });

  await page.goto(base + "/", { waitUntil: "load", timeout: 15000 });
  if ((await page.title()) !== "Sluice") fail(`unexpected title ${await page.title()}`);

  const row = page.locator(`tr[data-job="${jobId}"]`);
  await row.waitFor({ timeout: 15000 });
  const read = async () => ({
    done: Number(await row.getAttribute("data-completed")),
    total: Number(await row.getAttribute("data-total")),
    text: (await row.locator("td.done-total").textContent()).trim(),
  });
  const first = await read();
  console.log(`first read: ${first.text}`);
  if (first.done >= first.total && first.total > 0) fail(`the job ended before the first read (${first.text}); give it more inputs`);
  // Progress must advance: the page re-renders every second.
  let second = first;
  // A batch of a slow model on a busy machine can take seconds: wait up to 30 s.
  const until = Date.now() + 30000;
  while (second.done <= first.done && Date.now() < until) {
    await page.waitForTimeout(500);
    second = await read();
  }
  console.log(`second read: ${second.text}`);
  if (!(second.done > first.done)) fail(`progress did not advance: ${first.text} then ${second.text}`);
  const width = await row.locator(".progress .done").evaluate((e) => e.getBoundingClientRect().width);
  if (!(width > 0)) fail("the progress bar is empty");

  // The batch-size chart of the model has bars with real size.
  const bars = page.locator(`svg.batch-hist[data-model="${model}"] rect.bar`);
  await bars.first().waitFor({ timeout: 10000 });
  const n = await bars.count();
  const box = await bars.first().boundingBox();
  if (!(n > 0 && box && box.height > 0 && box.width > 0)) fail(`batch-size chart did not render (${n} bars, ${JSON.stringify(box)})`);
  console.log(`batch-size chart: ${n} bar(s)`);

  // The throughput chart has drawn something (a line needs two polls).
  await page.waitForTimeout(1200);
  const inked = await page.evaluate(() => {
    const c = document.getElementById("throughput");
    const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let k = 0;
    for (let i = 3; i < d.length; i += 4) if (d[i] > 0) k++;
    return k;
  });
  if (!(inked > 0)) fail("throughput chart is blank");
  console.log(`throughput chart: ${inked} painted pixels`);

  await page.screenshot({ path: shot, fullPage: true });
  console.log(`screenshot: ${shot}`);
  // The cancel button cancels the job (DELETE /v1/jobs/{id}) after a confirmation.
  page.once("dialog", (d) => d.accept());
  await row.locator("button.cancel").click();
  await row.locator(".status.CANCELED").waitFor({ timeout: 10000 });
  console.log("cancel button: job canceled");

  if (foreign.length) fail(`the page fetched from outside the server: ${foreign.join(", ")}`);
  if (errors.length) fail(`page errors: ${errors.join(" | ")}`);
  console.log("dashboard browser test: ok");
} catch (e) {
  console.error(`dashboard browser test FAILED: ${e.message}`);
  code = 1;
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
process.exit(code);
