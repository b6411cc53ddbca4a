#!/usr/bin/env node
'use strict';
// The local S3 server behind `pedstream stack up --durable`: s3rver 3.7.1 (same command line) with
// atomic object writes.
//
// s3rver writes an object by truncating its file and streaming the request body into it, and
// answers once the body has been read, not written. A client that dies mid-upload (the broker
// killed while it stores a segment) leaves the object empty or cut short, and the broker that
// restarts on that store fails on it ("EOF while parsing a value") and never serves again. Real S3
// never shows a partial object: a PUT replaces the object whole or not at all. So here an upload
// goes to a temporary file, is checked against its declared length, and replaces the object with
// one rename only once it is complete on disk; an aborted upload leaves the old object untouched.

const crypto = require('crypto');
const fs = require('fs');
const path = require('path');

const FilesystemStore = require('s3rver/lib/stores/filesystem');

let uploads = 0;

async function replaceAtomically(target, write) {
  const temp = `${target}.upload-${process.pid}-${++uploads}`;
  try {
    await write(temp);
    await fs.promises.rename(temp, target);
  } catch (err) {
    await fs.promises.rm(temp, { force: true });
    throw err;
  }
}

function declaredLength(metadata) {
  const text = metadata && metadata['content-length'];
  return text === undefined ? null : Number(text);
}

function streamInto(temp, source, onChunk) {
  return new Promise((resolve, reject) => {
    const out = fs.createWriteStream(temp);
    const fail = err => {
      out.destroy();
      reject(err);
    };
    out.on('error', fail);
    out.on('finish', resolve); // the bytes are written to the file, not just read from the client
    source.on('aborted', () => fail(new Error('upload aborted by the client')));
    source.on('error', fail);
    source.on('data', onChunk);
    source.pipe(out);
  });
}

FilesystemStore.prototype.putObject = async function putObject(object) {
  const objectPath = this.getResourcePath(object.bucket, object.key, 'object');
  await fs.promises.mkdir(path.dirname(objectPath), { recursive: true });
  const md5 = crypto.createHash('md5');
  let size = 0;
  const count = chunk => {
    md5.update(chunk);
    size += chunk.length;
  };
  await replaceAtomically(objectPath, async temp => {
    if (Buffer.isBuffer(object.content)) {
      count(object.content);
      await fs.promises.writeFile(temp, object.content);
      return;
    }
    await streamInto(temp, object.content, count);
    const declared = declaredLength(object.metadata);
    if (declared !== null && declared !== size) {
      throw new Error(`upload incomplete: ${size} of ${declared} bytes`);
    }
  });
  const digest = md5.digest('hex');
  await this.putMetadata(object.bucket, object.key, object.metadata, digest);
  return { size, md5: digest };
};

const S3Object = require('s3rver/lib/models/object');

// s3rver's metadata files (object.md5, metadata.json), each replaced whole
FilesystemStore.prototype.putMetadata = async function putMetadata(bucket, key, metadata, md5) {
  const json = {};
  for (const [name, value] of Object.entries(metadata || {})) {
    if (S3Object.ALLOWED_METADATA.includes(name) || name.startsWith('x-amz-meta-')) json[name] = value;
  }
  const write = (target, text) => replaceAtomically(target, temp => fs.promises.writeFile(temp, text));
  if (md5) await write(this.getResourcePath(bucket, key, 'object.md5'), md5);
  await write(this.getResourcePath(bucket, key, 'metadata.json'), JSON.stringify(json, null, 2));
};

// Metadata kept in memory. The broker lists a partition's objects on every fetch, and s3rver
// answers a list by reading every listed object's metadata and checksum files from disk (three
// file operations per object): with a few thousand objects it took most of a core and the broker's
// fetches fell behind 20 frames/s (bench faults broker-restart). This process is the store's only
// writer, so every put, copy and delete of an object drops its entry, and a read that overlapped
// a write of that object does not fill it.
const metadataCache = new Map();
const generations = new Map(); // object -> count of its writes' starts and ends
let clears = 0; // multipart completions, which forget every object
const cacheKey = (bucket, key) => `${bucket}/${key}`;
const readMetadata = FilesystemStore.prototype.getMetadata;
FilesystemStore.prototype.getMetadata = async function getMetadata(bucket, key) {
  const id = cacheKey(bucket, key);
  const cached = metadataCache.get(id);
  if (cached !== undefined) return { ...cached };
  const before = [generations.get(id), clears];
  const metadata = await readMetadata.call(this, bucket, key);
  if (generations.get(id) === before[0] && clears === before[1]) metadataCache.set(id, metadata);
  return { ...metadata };
};
const writtenObject = {
  putMetadata: args => [args[0], args[1]],
  putObject: args => [args[0].bucket, args[0].key],
  copyObject: args => [args[2], args[3]],
  deleteObject: args => [args[0], args[1]],
  putObjectMultipart: () => null, // the key is read inside
};
for (const [name, objectOf] of Object.entries(writtenObject)) {
  const write = FilesystemStore.prototype[name];
  FilesystemStore.prototype[name] = async function (...args) {
    const object = objectOf(args);
    const forget = () => {
      if (object === null) {
        clears += 1;
        metadataCache.clear();
        return;
      }
      const id = cacheKey(...object);
      generations.set(id, (generations.get(id) || 0) + 1);
      metadataCache.delete(id);
    };
    forget();
    try {
      return await write.apply(this, args);
    } finally {
      forget(); // and a read that overlapped the write does not fill the cache
    }
  };
}

require('s3rver/bin/s3rver.js');
