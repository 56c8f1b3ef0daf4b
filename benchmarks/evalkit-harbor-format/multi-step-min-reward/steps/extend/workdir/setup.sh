# Harbor runs this with `bash <workdir>/setup.sh` after uploading workdir/ and before the step's agent.
echo setup-ran >> /app/setup.log
