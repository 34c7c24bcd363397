// Vercel AI SDK calls with experimental_telemetry, exported over OTLP/HTTP protobuf (run by capture_vercel.py).
// Env: FAKE_BASE (the fake provider), TRACES_URL (the recorder), SERVICE.
import * as ai from 'ai';
import { createOpenAI } from '@ai-sdk/openai';
import { BasicTracerProvider, BatchSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-proto';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { context, trace } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';

context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
const provider = new BasicTracerProvider({
  resource: resourceFromAttributes({ 'service.name': process.env.SERVICE }),
  spanProcessors: [new BatchSpanProcessor(new OTLPTraceExporter({ url: process.env.TRACES_URL }), { scheduledDelayMillis: 60000 })],
});
trace.setGlobalTracerProvider(provider);
const tracer = provider.getTracer('ai');
const telemetry = { isEnabled: true, tracer };
const { generateText, streamText, embed, tool, jsonSchema } = ai;
if (process.env.AI_MAJOR === '7') {
  // AI SDK 7: spans come from a registered telemetry integration (@ai-sdk/otel), GenAI semconv shaped.
  const { OpenTelemetry } = await import('@ai-sdk/otel');
  ai.registerTelemetry(new OpenTelemetry({ tracer }));
}
const openai = createOpenAI({ baseURL: process.env.FAKE_BASE + '/v1', apiKey: 'sk-fake' });
const hello = 'Say hello to the capture run, in one short sentence.';

await generateText({ model: openai.chat('gpt-4o-mini'), prompt: hello, maxRetries: 0, experimental_telemetry: telemetry });
const s = streamText({ model: openai.chat('gpt-4o-mini'), prompt: hello, maxRetries: 0, experimental_telemetry: telemetry });
for await (const _ of s.textStream) { /* drain */ }
await s.usage;
await generateText({ model: openai.responses('o4-mini'), prompt: 'Think, then answer: 2+2?', maxRetries: 0, experimental_telemetry: telemetry });
await generateText({
  model: openai.chat('gpt-4o-mini'), prompt: 'TOOL: what is the weather in Paris?', maxRetries: 0, experimental_telemetry: telemetry,
  tools: { get_weather: tool({ description: 'Weather in a city', inputSchema: jsonSchema({ type: 'object', properties: { city: { type: 'string' } }, required: ['city'] }), execute: async ({ city }) => `Sunny in ${city}` }) },
});
await embed({ model: openai.embedding('text-embedding-3-small'), value: 'first text to embed', maxRetries: 0, experimental_telemetry: telemetry });
try {
  await generateText({ model: openai.chat('gpt-4o-mini'), prompt: 'FAIL429 please', maxRetries: 0, experimental_telemetry: telemetry });
} catch (e) { /* expected */ }
await provider.forceFlush();
await provider.shutdown();
